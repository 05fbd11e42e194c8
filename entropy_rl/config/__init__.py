"""The config sections shared by every command (`entropy_rl.config.sections`)."""

from entropy_rl.config.sections import (
    ARCHITECTURE_FIELDS,
    DATASET_FILE_DEFAULTS,
    ENGINE_FIELDS,
    CurriculumConfig,
    DataConfig,
    EvalConfig,
    Fraction,
    LoggingConfig,
    Mesh,
    ModelConfig,
    NonNegative,
    Positive,
    RolloutConfig,
    check_benchmark,
    dataset_file_defaults,
)

__all__ = ["ARCHITECTURE_FIELDS", "DATASET_FILE_DEFAULTS", "ENGINE_FIELDS", "CurriculumConfig", "DataConfig", "EvalConfig",
           "Fraction", "LoggingConfig", "Mesh", "ModelConfig", "NonNegative", "Positive", "RolloutConfig",
           "check_benchmark", "dataset_file_defaults"]
