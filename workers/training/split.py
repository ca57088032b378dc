"""Data parallel over the cores of one machine, without start-up: every batch is split between this process
and a fork of it, one core each, and the fork's gradients are added to this process's before the optimizer step.

Why: on a small CPU job, torch's second intra-op thread idles through everything that is not a large matmul
(Python, the small LoRA matmuls, element-wise work), so two threads train about 1.4 times one; two processes of
one thread each run all of it in parallel. DDP (`hyperparameters.processes`) does the same with new processes,
which take 20-30 s to start: longer than a small job trains. A fork starts in milliseconds, sharing the frozen
weights copy-on-write.

How:
- the trainable parameters move to shared memory before the fork, so the optimizer's in-place updates in this
  process are what the fork computes with at the next step; the fork writes its gradients to shared buffers;
- each step sends the second half of the batch through a pipe (a JSON header and the raw tensor bytes; nothing
  is unpickled), the fork runs the Trainer's own compute_loss on it (autocast and all) and backward, while this
  process does the first half; then this process adds the fork's gradients. Each half's loss is its mean, and
  the two are weighted by their rows or label tokens, so that the sum is the whole batch's gradient;
- rows split in the middle; a packed sft batch (one row of several sequences) splits at the sequence boundary
  nearest the middle token, so neither half attends across it; a packed classification batch (a few bins of
  rows, one label per row) gives each half whole bins and their rows' labels;
- the fork draws its own dropout masks (seeded from the job's seed), so runs repeat;
- if the fork fails or stops answering, this process trains the rest of the job alone (the step in progress is
  finished here), and says so in the log.

Not used for: methods with their own step or after-step hooks (MeZO, LT-SFT, LISA, AdaLoRA...: they change
which weights train or how, in this process only), accelerators, DDP jobs, a single free core, or where
`TRAIN_FORK=0`.
"""

import json
import logging
import os
import select
import signal
import struct
import time
from typing import Any

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 600.0  # one half-batch's forward and backward; a fork silent for this long is given up
CLOSE_WAIT_S = 10.0  # for the fork to end once its pipe is closed, before it is killed
_HEADER = struct.Struct("<Q")


# --- frames: a JSON header and raw tensor bytes, never pickle ------------------------------------------------


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, size: int, timeout: float | None) -> bytes | None:
    chunks, left = [], size
    while left:
        if timeout is not None:
            poller = select.poll()  # not select(): a worker may hold more than FD_SETSIZE descriptors
            poller.register(fd, select.POLLIN | select.POLLHUP)
            if not poller.poll(timeout * 1000):
                raise TimeoutError(f"no answer from the fork in {timeout:.0f} s")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None  # the other end closed
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def frame_send(fd: int, meta: dict[str, Any], tensors: dict[str, Any] | None = None) -> None:
    """Send `meta` (JSON) and `tensors` (contiguous CPU tensors, as raw bytes) as one frame."""
    import torch

    blobs = []
    specs = []
    for name, tensor in (tensors or {}).items():
        flat = tensor.detach().contiguous().view(-1)
        blobs.append(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        specs.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
                      "bytes": len(blobs[-1])})
    header = json.dumps({**meta, "tensors": specs}).encode()
    _write_all(fd, _HEADER.pack(len(header)) + header)
    for blob in blobs:
        _write_all(fd, blob)


def frame_receive(fd: int, timeout: float | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """One frame: (meta, tensors), or None when the other end has closed the pipe."""
    import torch

    size = _read_exactly(fd, _HEADER.size, timeout)
    if size is None:
        return None
    header = _read_exactly(fd, _HEADER.unpack(size)[0], timeout)
    if header is None:
        return None
    meta = json.loads(header)
    tensors = {}
    for spec in meta.pop("tensors"):
        raw = _read_exactly(fd, spec["bytes"], timeout) if spec["bytes"] else b""
        if raw is None:
            return None
        dtype = getattr(torch, spec["dtype"])
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[spec["name"]] = flat.view(spec["shape"])
    return meta, tensors


# --- splitting a batch ----------------------------------------------------------------------------------------


def batch_split(inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Two halves of a collated batch, or None when it cannot be split (one row of one sequence, or values that
    are not tensors with the batch's rows first)."""
    import torch

    if not inputs or not all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in inputs.values()):
        return None
    packed = _packed_rows_split(inputs)
    if packed is not None:
        return packed
    rows = {v.shape[0] for v in inputs.values()}
    if len(rows) != 1:
        return None
    count = rows.pop()
    if count >= 2:
        half = count // 2
        return {k: v[:half] for k, v in inputs.items()}, {k: v[half:] for k, v in inputs.items()}
    positions = inputs.get("position_ids")
    if positions is None or positions.dim() != 2 or not all(v.dim() == 2 and v.shape == positions.shape
                                                            for v in inputs.values()):
        return None
    starts = (positions[0] == 0).nonzero().flatten().tolist()  # packed rows: each sequence starts at position 0
    starts = [s for s in starts if s > 0]
    if not starts:
        return None
    cut = _cut_nearest(starts, positions.shape[1] / 2)
    return {k: v[:, :cut] for k, v in inputs.items()}, {k: v[:, cut:] for k, v in inputs.items()}


def _packed_rows_split(inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A packed classification batch (engine.PackedClassification: [bins, T] tokens, position 0 at each row's
    start, one label per row, bin after bin): the first half of the bins and their rows' labels, and the rest;
    one bin is cut at the row boundary nearest its middle token. None for any other batch."""
    positions, labels = inputs.get("position_ids"), inputs.get("labels")
    if (positions is None or labels is None or positions.dim() != 2 or labels.dim() != 1
            or not all(v.shape == positions.shape for k, v in inputs.items() if k != "labels")):
        return None
    starts = positions == 0
    if int(starts.sum()) != labels.shape[0] or not bool(starts[:, 0].all()):
        return None
    bins = positions.shape[0]
    if bins >= 2:
        half = bins // 2
        rows = int(starts[:half].sum())
        return ({k: v[:rows] if k == "labels" else v[:half] for k, v in inputs.items()},
                {k: v[rows:] if k == "labels" else v[half:] for k, v in inputs.items()})
    cuts = starts[0].nonzero().flatten().tolist()[1:]
    if not cuts:
        return None
    cut = _cut_nearest(cuts, int((positions[0] >= 0).sum()) / 2)
    row = cuts.index(cut) + 1  # rows before the cut: the first row, and one per earlier boundary
    return ({k: v[:row] if k == "labels" else v[:, :cut] for k, v in inputs.items()},
            {k: v[row:] if k == "labels" else v[:, cut:] for k, v in inputs.items()})


def _cut_nearest(starts: list[int], middle: float) -> int:
    """The sequence start (a token index) nearest `middle`: where a packed row of sequences is cut in two."""
    return min(starts, key=lambda s: abs(s - middle))


def loss_items(half: dict[str, Any], *, shifted: bool = False) -> int:
    """What a mean loss averages over in this half: label tokens (not -100) for per-token labels, after the
    one-token shift of a causal LM's loss when `shifted`; else rows."""
    labels = half.get("labels")
    if labels is None:
        return int(next(iter(half.values())).shape[0])
    if labels.dim() >= 2:
        return int((labels[..., 1:] if shifted else labels).ne(-100).sum())
    return int(labels.shape[0])


# --- the fork ------------------------------------------------------------------------------------------------


def _fork_main(trainer: Any, model: Any, params: list[Any], grads: list[Any], commands: int, answers: int,
               seed: int, threads: int) -> None:
    """The fork's loop: a half-batch in, its loss out, its gradients in `grads`. Never returns."""
    import torch

    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a Ctrl-C reaches both
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the worker's warm-shutdown handler: just end
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        model.train()  # once: the parent did before forking, and this process's model is never evaluated
        while True:
            frame = frame_receive(commands)
            if frame is None:
                break  # the parent closed the pipe: training is over, or the parent is gone
            _, batch = frame
            try:
                with trainer.compute_loss_context_manager():
                    loss = trainer.compute_loss(model, batch, num_items_in_batch=None)  # its half's mean
                loss.backward()
                for param, grad in zip(params, grads, strict=True):
                    if param.grad is None:
                        grad.zero_()
                    else:
                        grad.copy_(param.grad)
                        param.grad = None
                frame_send(answers, {"loss": float(loss.detach())})
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which goes on alone
                frame_send(answers, {"error": f"{type(exc).__name__}: {exc}"[:1000]})
                break
    except BaseException:  # noqa: BLE001 - whatever happens, never return into the parent's code
        code = 1
    finally:
        os._exit(code)


class ForkPeer:
    """This process's partner: a fork that trains the second half of every batch (see the module docstring)."""

    def __init__(self, trainer: Any, model: Any, seed: int, threads: int = 1):
        import torch

        self.params = [p for p in model.parameters() if p.requires_grad]
        for param in self.params:
            param.data.share_memory_()
        self.grads = [torch.zeros_like(p, memory_format=torch.contiguous_format).share_memory_()
                      for p in self.params]
        command_read, self.commands = os.pipe()
        self.answers, answer_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the fork
            os.close(self.commands)
            os.close(self.answers)
            _fork_main(trainer, model, self.params, self.grads, command_read, answer_write, seed, threads)
        os.close(command_read)
        os.close(answer_write)
        self.pending = False

    def submit(self, half: dict[str, Any]) -> None:
        frame_send(self.commands, {}, half)
        self.pending = True

    def collect(self, alpha: float) -> float:
        """Wait for the fork's half; add alpha times its gradients to this process's. Returns its loss."""
        import torch

        frame = frame_receive(self.answers, timeout=ANSWER_TIMEOUT_S)
        if frame is None:
            raise RuntimeError("the fork ended")
        self.pending = False
        meta, _ = frame
        if "error" in meta:
            raise RuntimeError(f"the fork failed: {meta['error']}")
        with torch.no_grad():
            for param, grad in zip(self.params, self.grads, strict=True):
                if param.grad is None:
                    param.grad = grad.mul(alpha)
                else:
                    param.grad.add_(grad, alpha=alpha)
        return float(meta["loss"])

    def close(self) -> None:
        if self.pid <= 0:
            return
        for fd in (self.commands, self.answers):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            if self.pending:  # a half in flight (or a fork that stopped answering): no need to wait for it
                os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + CLOSE_WAIT_S
            while not os.waitpid(self.pid, os.WNOHANG)[0]:  # it ends on reading the closed pipe
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    break
                time.sleep(0.05)
        except (ChildProcessError, ProcessLookupError):
            pass
        self.pid = -1


def split_trainer_class(base: Any, *, seed: int, threads: int, threads_alone: int, shifted: bool) -> Any:
    """`base` (a Trainer class) with its training step split between this process and a fork, `threads` torch
    threads each; `threads_alone` for this process if the fork fails. The fork draws dropout from `seed`.
    `shifted`: the loss is a causal LM's (labels shifted by one token)."""
    import torch

    class SplitTrainer(base):  # type: ignore[misc, valid-type]
        fork_peer: ForkPeer | None = None
        fork_failed = False
        train_mode_set = False

        def _peer(self, model: Any) -> ForkPeer | None:
            if self.fork_peer is None and not self.fork_failed:
                torch.set_num_threads(threads)
                try:  # shared memory can run out (a container's /dev/shm is 64 MB by default), fork can fail
                    self.fork_peer = ForkPeer(self, model, seed, threads)
                except (OSError, RuntimeError) as exc:
                    self._give_up(exc)
                    return None
                log.info("training split between this process and a fork (pid %s)", self.fork_peer.pid)
            return self.fork_peer

        def fork_close(self) -> None:
            if self.fork_peer is not None:
                self.fork_peer.close()
                self.fork_peer = None

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            halves = batch_split(inputs) if not self.fork_failed else None
            if halves is None:
                return super().training_step(model, inputs, num_items_in_batch)
            # model.train() walks the module tree, so not at every step: on the first (a loaded model's own modules
            # are in eval mode and its adapter's not, so model.training alone says True) and after evaluation
            if not model.training or not self.train_mode_set:
                model.train()
                self.train_mode_set = True
            first, second = (self._prepare_inputs(h) for h in halves)
            # Each half's loss is its mean (num_items_in_batch None); weighted by items they make the batch's mean.
            # The Trainer then expects either that mean over the accumulation steps, or (when it counted the
            # items of all of them, for a loss that sums) the batch's share of that count.
            n1, n2 = loss_items(first, shifted=shifted), loss_items(second, shifted=shifted)
            w1, w2 = n1 / max(1, n1 + n2), n2 / max(1, n1 + n2)
            if (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func:
                factor = (n1 + n2) / max(1, int(num_items_in_batch))
            else:
                factor = 1.0 / self.current_gradient_accumulation_steps
            peer = self._peer(model)
            if peer is None:
                return super().training_step(model, inputs, num_items_in_batch)
            try:
                peer.submit(second)
            except OSError as exc:
                self._give_up(exc)
                return super().training_step(model, inputs, num_items_in_batch)
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, first, num_items_in_batch=None)
            self.accelerator.backward(loss * (w1 * factor))
            try:
                other = peer.collect(w2 * factor)
            except (OSError, RuntimeError, TimeoutError) as exc:
                self._give_up(exc)
                with self.compute_loss_context_manager():  # the second half here, as the fork would have
                    other_loss = self.compute_loss(model, second, num_items_in_batch=None)
                self.accelerator.backward(other_loss * (w2 * factor))
                other = float(other_loss.detach())
            return (loss.detach() * w1 + other * w2) * factor

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            """Evaluation runs here alone, the fork waiting: with every thread."""
            if self.fork_peer is None:
                return super().evaluate(*args, **kwargs)
            torch.set_num_threads(threads_alone)
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                torch.set_num_threads(threads)

        def _give_up(self, exc: BaseException) -> None:
            log.warning("the training fork failed (%s); training on in this process alone", exc)
            self.fork_failed = True
            self.fork_close()
            torch.set_num_threads(threads_alone)

    return SplitTrainer
