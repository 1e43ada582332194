"""Configuration (layer 1, docs/design.md): the schema (TOML in, validated frozen dataclasses out),
what each key means, and the reference generated from both."""

from .schema import (
                     BACKENDS,
                     PROTOCOLS,
                     SECTIONS,
                     BackendConfig,
                     ByzantineConfig,
                     Config,
                     DataConfig,
                     GateConfig,
                     ModelConfig,
                     TrainingConfig,
                     UnlearningConfig,
                     from_dict,
                     load,
                     parse_overrides,
                     validate,
)

__all__ = ["BACKENDS", "PROTOCOLS", "SECTIONS", "BackendConfig", "ByzantineConfig", "Config", "DataConfig",
           "GateConfig", "ModelConfig", "TrainingConfig", "UnlearningConfig", "from_dict", "load", "parse_overrides",
           "validate"]
