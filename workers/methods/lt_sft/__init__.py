"""LT-SFT: Ansell et al., "Composable Sparse Fine-Tuning for Cross-Lingual Transfer", ACL 2022 (arXiv:2110.07560).

Lottery-ticket sparse fine-tuning, in two phases over the job's steps:

1. full phase (the first full_phase fraction of the steps): every parameter trains, theta_0 -> theta_1;
2. selection: keep the k = round(density * n) parameters with the largest |theta_1 - theta_0| (n: the body's
   parameters) and reset every parameter to theta_0;
3. sparse phase: train again from theta_0 with gradients masked to the k kept entries, as a run of its own (fresh
   optimizer moments, the learning-rate schedule started again from its peak); after each optimizer step the
   other entries are put back to theta_0 (weight decay would otherwise move them).

The result is a sparse difference phi = theta_2 - theta_0 with exactly k entries, saved as indices and values. It
is added to the base (theta_0 + phi: loading is merging) and to other such differences: theta_0 + phi_a + phi_b,
e.g. a language and a task difference. The classification head trains densely in both phases and is saved whole.
Written here: no maintained library has it."""

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.registry import Method, lazy, method_register

MODEL = "workers.methods.lt_sft.model"
LOADING = ("Not a peft folder: a sparse difference. adapter_model.safetensors holds, for each changed parameter "
           "<name> of the base model, sparse/<name>/indices (int64, into the flattened tensor) and "
           "sparse/<name>/values, and the classification head whole as dense/<name>. Load with "
           "workers.methods.lt_sft.model.load(base_model, directory), which adds the difference into the base "
           "weights: base.<name>.view(-1)[indices] += values. Several differences (e.g. language + task) compose "
           "by addition: load(base_model, dir_a, dir_b).")


class LtSftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="LT-SFT (composable sparse fine-tuning)")

    density: float = Field(0.01, gt=0.0, le=1.0, description="Fraction of the base model's parameters kept in the "
                           "sparse difference (k = density x parameters; the classification head is kept whole).")
    full_phase: float = Field(0.5, gt=0.0, lt=1.0, description="Fraction of the job's steps spent in the full "
                              "phase that selects the parameters; the rest is the sparse phase.")


method_register(Method(name="lt_sft", title="LT-SFT (composable sparse fine-tuning)", paper="arXiv:2110.07560",
                       config=LtSftConfig, build=lazy(f"{MODEL}:build"), after_step=lazy(f"{MODEL}:after_step"),
                       save=lazy(f"{MODEL}:save"), load=lazy(f"{MODEL}:load"), needs_total_step=True,
                       peft_backed=False, loading=LOADING))
