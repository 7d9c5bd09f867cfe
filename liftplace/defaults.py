"""Every default and limit of liftplace, defined once.

The CLI, the training loop, the job spec, the API schema and the web form read these values
from here, so a default changes in one place only. Imports nothing (no torch): cheap to read.
"""

from __future__ import annotations

# --- LIFT / PLACE (docs/method.md: the LIFT and PLACE contract) ---------------------
GROUP_SIZE: int = 16  # K, positions per PLACE group; the paper fixes K = 16
COARSE_DISTANCE: str = "l1"  # "l1" (default) or "l2"
COARSE_DISTANCES: tuple[str, ...] = ("l1", "l2")
REDUCTION: str = "sum"  # "sum" (pixel-space DDPM) or "mean" (latent codebases)
REDUCTIONS: tuple[str, ...] = ("sum", "mean")
ABLATIONS: tuple[str | None, ...] = (None, "coarse", "fine")
LIFT_EPS: float = 1e-7
CURRICULUM: bool = True

# --- loss weights, pixel-space DDPM defaults of the paper --------------------------
LAMBDA_DIFF: float = 1.0
LAMBDA_KD: float = 1.0
LAMBDA_FEAT: float = 1e-6

# --- DDPM ------------------------------------------------------------------------------
NUM_TRAIN_TIMESTEPS: int = 1000
BETA_START: float = 1e-4
BETA_END: float = 0.02
BETA_SCHEDULE: str = "linear"

# --- optimisation ------------------------------------------------------------------
STEPS: int = 100  # a short run; studies and the CLI choose their own budget
SEED: int = 0
SEEDS_PER_CELL: int = 5  # the paper's five tries per (teacher, method) cell
LEARNING_RATE: float = 2e-4
# "constant": the paper's; "cosine": decayed from lr to 0 over the run (short budgets: the run settles
# before it ends instead of stopping mid-descent)
LR_SCHEDULE: str = "constant"
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")
ADAM_EPS: float = 1e-8
GRAD_CLIP: float = 1.0
EMA_DECAY: float = 0.9999
BATCH_SIZE: int = 64
# Steps between the checkpoints of a run that has a checkpoint folder (0: only the final one).
# Jobs resume from the last one, so a retry loses at most this many steps.
CHECKPOINT_EVERY: int = 500
LOG_EVERY: int = 1
# Points per metric a job logs to MLflow at most, whatever its length: each point is the mean of the
# steps since the previous one (JobSpec.log_every overrides the derived interval).
MLFLOW_MAX_POINTS: int = 2000

# --- students (Diff-Pruning) -------------------------------------------------------
STUDENT_RATIO: float = 0.9
PRUNING_IMPORTANCES: tuple[str, ...] = ("taylor", "magnitude")
PRUNING_IMPORTANCE: str = "taylor"
TAYLOR_BATCHES: int = 4  # batches of the diffusion loss accumulated for Taylor scores
TAYLOR_MAX_TIMESTEP_FRACTION: float = 0.3  # "early" timesteps: t < 0.3 T (low noise)

# --- sampling ----------------------------------------------------------------------
DDIM_STEPS: int = 100
DDIM_ETA: float = 0.0
SAMPLE_BATCH_SIZE: int = 256
GRID_SAMPLES: int = 64  # images in a sample grid

# --- evaluation --------------------------------------------------------------------
FID_SAMPLES: int = 1000  # generated samples per FID; the paper uses 50K on CelebA
FID_FEATURES: str = "digits"  # feature space of the FID: "digits" (fid_digits) or "inception"

# --- data --------------------------------------------------------------------------
EMBEDDED_DATASETS: tuple[str, ...] = ("digits",)  # shipped with liftplace (the sklearn digits), by name
DATASET: str = "digits"
DIGITS_RESOLUTION: int = 8  # native sklearn digits size; K = 16 divides 8*8
IMAGE_FOLDER_RESOLUTION: int = 64
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")

# --- limits ------------------------------------------------------------------------
MAX_STEPS: int = 10_000_000
