"""MeZO: Malladi et al., "Fine-Tuning Language Models with Just Forward Passes", NeurIPS 2023 (arXiv:2305.17333).

Zeroth-order SGD (SPSA) with the memory of inference: each step draws z ~ N(0, I) over the trainable parameters
from a per-step seed, and with two forward passes estimates the directional derivative

    g = (L(theta + eps z) - L(theta - eps z)) / (2 eps),      theta <- theta - lr * g * z.

z is never stored: it is regenerated from the seed for each of the three in-place moves (+eps, -2 eps, back +eps)
and for the update. backward() is never called. The forwards run in eval mode (no dropout) as in the paper's code.
By default all parameters train (full-parameter MeZO). The noise of the estimate grows with the number of perturbed
parameters, so, as in the paper's MeZO (LoRA) rows, trainable="lora" perturbs and moves only rank-r LoRA matrices
(peft's, on the attention query and value projections) and the task head. The head of a classification task starts
random and reads small features, so it may take its own larger step (head_lr): the same z, the update scaled per
parameter group (a diagonal preconditioner; still forward passes only). The method brings its own training step and
learning rate. Written here: no maintained library has it.

A head that starts random is why MeZO hardly learns a classification task in the steps a small job has: the
paper classifies through a prompt and the pretrained LM head, so its runs start from a zero-shot classifier. An
encoder checkpoint has no such head; head_init=centroids gives it one with forward passes only (the class means
mu of the pooled features: W = s mu, b = -s |mu|^2 / 2, the nearest-centroid rule as a linear layer, s the scale
of lowest loss on the rows it saw), and pooling=mean lets the head read the features a sentence-transformers
checkpoint was trained to produce."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.methods.registry import Method, lazy, method_register

MODEL = "workers.methods.mezo.model"
LOADING = ("Not a peft folder. adapter_model.safetensors holds what MeZO trained under the model's own names: every "
           "parameter (trainable=all), or peft's LoRA matrices and the head (trainable=lora); adapter_config.json "
           "holds the method config. Load with workers.methods.mezo.model.load(base_model, directory), which adds "
           "the LoRA layers first; a trainable=all folder also loads with base_model.load_state_dict(tensors, "
           "strict=False).")


class MezoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", title="MeZO (zeroth-order, forward passes only)")

    lr: float = Field(1e-6, gt=0.0, le=1.0, description="MeZO's own learning rate (the job's learning_rate is not "
                      "used); the paper uses 1e-7 to 1e-6 on large models.")
    eps: float = Field(1e-3, gt=0.0, le=1.0, description="Size of the perturbation theta +/- eps z.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the perturbations (step s uses seed + s).")
    trainable: Literal["all", "lora"] = Field(
        "all", description="What MeZO perturbs and moves. all: every parameter (the paper's full-parameter MeZO). "
        "lora: rank-lora_r LoRA matrices on the attention query and value projections, plus the task head (the "
        "paper's MeZO (LoRA)): far fewer perturbed parameters, so a less noisy step; the base weights stay frozen "
        "and only the LoRA matrices and head are saved.")
    lora_r: int = Field(8, ge=1, le=256, description="Rank of the LoRA matrices (trainable=lora only; alpha is 2r).")
    head_lr: float | None = Field(None, gt=0.0, le=10.0, description="Learning rate of the task head (a fresh "
                                  "classifier), which starts random and often needs a far larger step than the "
                                  "rest; default: lr. Same perturbation, the update scaled per group.")
    head_init: Literal["centroids", "random"] = Field(
        "centroids", description="How a classification head starts. centroids: before the first step, from the "
        "mean feature of each class over the first 8 training batches (forward passes only; nearest-centroid "
        "weights, their scale chosen for the lowest loss on those rows), so that MeZO starts from a classifier, "
        "as the paper's prompt and pretrained LM head do, instead of from chance. Used where the head reads one "
        "vector per row (BERT-like classifiers); elsewhere, and for the other tasks, the head starts random. "
        "random: the head as the model builds it.")
    pooling: Literal["model", "mean"] = Field(
        "model", description="What a classification head reads. model: the model's own (BERT: a dense layer on the "
        "first token, random where the checkpoint has none, as in sentence-transformers checkpoints). mean: the "
        "mean of the last layer over each row's tokens, how sentence-transformers checkpoints were trained (BERT-"
        "like models with a pooler only); restored when the adapter is loaded.")


method_register(Method(name="mezo", title="MeZO (zeroth-order)", paper="arXiv:2305.17333", config=MezoConfig,
                       build=lazy(f"{MODEL}:build"), training_step=lazy(f"{MODEL}:training_step"),
                       prepare=lazy(f"{MODEL}:prepare"),
                       save=lazy(f"{MODEL}:save"), load=lazy(f"{MODEL}:load"), mergeable=False,
                       peft_backed=False, loading=LOADING))
