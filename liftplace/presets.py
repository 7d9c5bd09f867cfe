"""Teacher architectures (diffusers UNet2DModel configurations), by name.

Kept apart from `liftplace.models` so that the names can be imported (API schemas, CLI
choices) without loading torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TeacherPreset", "TEACHER_PRESETS", "PRESET_NAMES"]


@dataclass(frozen=True)
class TeacherPreset:
    """A UNet2DModel configuration for the embedded digits data."""

    name: str
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    norm_num_groups: int
    attention: bool
    description: str
    attention_head_dim: int | None = 8  # None: one head over all channels (as the original DDPM)

    def config(self, sample_size: int, in_channels: int = 1) -> dict:
        return dict(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            down_block_types=self.down_block_types,
            up_block_types=self.up_block_types,
            norm_num_groups=self.norm_num_groups,
            add_attention=self.attention,
            attention_head_dim=self.attention_head_dim,
        )


_DOWN3 = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
_UP3 = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D")

TEACHER_PRESETS: dict[str, TeacherPreset] = {
    p.name: p
    for p in (
        TeacherPreset("digits-s", (32, 64, 64), 1, _DOWN3, _UP3, 8, True, "small digits teacher"),
        TeacherPreset("digits-m", (64, 128, 128), 1, _DOWN3, _UP3, 8, True, "medium digits teacher"),
        TeacherPreset("digits-l", (96, 192, 192), 2, _DOWN3, _UP3, 8, True, "large digits teacher"),
        # The CelebA 64x64 DDPM of DDIM / Diff-Pruning (ch 128, mult 1,2,2,2,4, attention at
        # 16x16): the paper's 78.7M teacher, for benchmarks and GPU studies on RGB data.
        TeacherPreset(
            "ddpm-celeba64", (128, 256, 256, 256, 512), 2,
            ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), 32, True,
            "CelebA-sized DDPM teacher (use in_channels=3, sample_size=64)", attention_head_dim=None,
        ),
        # Test-sized: a few thousand parameters, for unit tests and smoke runs.
        TeacherPreset(
            "tiny", (16, 32), 1, ("DownBlock2D", "AttnDownBlock2D"), ("AttnUpBlock2D", "UpBlock2D"), 4, True,
            "test-sized teacher",
        ),
    )
}
PRESET_NAMES: tuple[str, ...] = tuple(TEACHER_PRESETS)
