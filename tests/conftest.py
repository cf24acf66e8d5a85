import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from configuration_vanilla import VanillaConfig  # noqa: E402


def tiny_config(**overrides) -> VanillaConfig:
    """A model small enough for a test to build, run and train in seconds."""
    values = dict(
        vocab_size=40,
        d_model=16,
        num_heads=4,
        d_ff=32,
        encoder_layers=2,
        decoder_layers=3,
        max_position_embeddings=64,
        dropout=0.0,
    )
    values.update(overrides)
    return VanillaConfig(**values)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
