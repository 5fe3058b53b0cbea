"""Running HIS at scale: Ray preprocessing and feature extraction, submitit/Slurm launch, requeue and resume."""
