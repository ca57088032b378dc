from pydantic import BaseModel, ConfigDict, Field


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(1.0, gt=0, le=100, description="Passes over the training data.")
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    batch_size: int = Field(16, ge=1, le=1024)
    max_seq_length: int = Field(128, ge=8, le=8192, description="Longer examples are truncated.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    warmup_ratio: float = Field(0.0, ge=0, le=0.5)
    weight_decay: float = Field(0.0, ge=0, le=1.0)
    max_train_seconds: int | None = Field(
        None, ge=10, le=7 * 24 * 3600, description="Stop training after this many seconds of training and keep the "
        "adapter as it is then (evaluated and published like a finished run).")
    schedule_fits_budget: bool = Field(
        True, description="With max_train_seconds: when the measured step time says the planned steps will not "
        "fit in the budget, the learning rate's decay is re-planned to reach 0 when the budget ends (checked at "
        "10%, 30% and 60% of it), so that training ends on a decayed learning rate instead of being cut at a "
        "high one. False keeps the schedule planned for all the epochs.")
    processes: int = Field(1, ge=1, le=8, description="Training processes on one worker (DDP through accelerate): "
                           "one per GPU on a CUDA worker, CPU processes otherwise. batch_size is the total over "
                           "all of them.")
