"""A small residual CNN for chest X-rays, loadable with `from_pretrained` (imports torch and huggingface_hub only)."""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download

WEIGHTS_NAME = "model.safetensors"


class ConvBNAct(nn.Sequential):
    """3x3 (or kxk) convolution, batch norm, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, kernel_size: int = 3, act: bool = True):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 strided) shortcut, as in ResNet."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvBNAct(c_in, c_out, stride)
        self.conv2 = ConvBNAct(c_out, c_out, act=False)
        self.shortcut = (
            nn.Identity() if stride == 1 and c_in == c_out else ConvBNAct(c_in, c_out, stride, kernel_size=1, act=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Stage(nn.Sequential):
    """`depth` blocks at one width; the first one halves the resolution."""

    def __init__(self, c_in: int, c_out: int, depth: int):
        super().__init__(*[BasicBlock(c_in if i == 0 else c_out, c_out, 2 if i == 0 else 1) for i in range(depth)])


class PneumoniaCNN(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="pneumonia-hf",
    pipeline_tag="image-classification",
    license="cc-by-4.0",
    tags=["chest-x-ray", "pneumonia", "medical-imaging", "image-classification"],
    repo_url="https://github.com/pneumonia-hf/pneumonia-hf",
):
    """Residual CNN: stem, `len(widths)` stages, global average pool, one logit for P(pneumonia).

    Every keyword argument is JSON-typed, so `config.json` written by `save_pretrained`
    holds everything needed to use the weights: architecture, input size, normalisation,
    label names and the operating threshold.
    """

    def __init__(
        self,
        in_channels: int = 1,
        stem_width: int = 16,
        widths: list[int] | tuple[int, ...] = (16, 32, 64, 128),
        depths: list[int] | tuple[int, ...] = (1, 1, 1, 1),
        dropout: float = 0.2,
        image_size: int = 128,
        mean: list[float] | tuple[float, ...] = (0.5,),
        std: list[float] | tuple[float, ...] = (0.25,),
        equalize: bool = False,
        labels: list[str] | tuple[str, ...] = ("NORMAL", "PNEUMONIA"),
        threshold: float = 0.5,
        ood: dict | None = None,
    ):
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError(f"widths ({len(widths)}) and depths ({len(depths)}) must have the same length")
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std need {in_channels} values (one per input channel), got {len(mean)}/{len(std)}")
        if list(labels) and len(labels) != 2:
            raise ValueError(f"labels must name two classes (negative, positive), got {list(labels)}")
        # Kept for config.json and for preprocessing (see pneumonia_hf.preprocessing).
        self.in_channels, self.image_size, self.equalize = in_channels, image_size, equalize
        self.mean, self.std = list(mean), list(std)
        self.labels, self.threshold = list(labels), float(threshold)
        # Reference statistics of training-set embeddings for the out-of-distribution guard
        # (see pneumonia_hf.ood); None until a training run fits them.
        self.ood = ood

        self.stem = ConvBNAct(in_channels, stem_width, stride=2)
        chans = [stem_width, *widths]
        self.stages = nn.Sequential(*[Stage(chans[i], chans[i + 1], d) for i, d in enumerate(depths)])
        self.num_features = chans[-1]
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, F, H/2^(S+1), W/2^(S+1)) last-stage feature map."""
        return self.stages(self.stem(x))

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, F, h, w) -> (B,) logit of P(pneumonia), or (B, F) pooled embedding with `pre_logits`."""
        x = feats.mean(dim=(2, 3))
        if pre_logits:
            return x
        return self.head(self.drop(x)).squeeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) logits."""
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) P(pneumonia), in eval mode."""
        was_training = self.training
        self.eval()
        p = torch.sigmoid(self(x))
        self.train(was_training)
        return p

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | os.PathLike | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs,
    ) -> "PneumoniaCNN":
        """Load safetensors weights only, with strict key matching (the mixin defaults to strict=False)."""
        from safetensors.torch import load_model

        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, WEIGHTS_NAME)
            if not os.path.isfile(model_file):
                raise FileNotFoundError(f"{model_id} holds no {WEIGHTS_NAME}")
        else:
            model_file = hf_hub_download(
                repo_id=model_id,
                filename=WEIGHTS_NAME,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        # safetensors raises on missing or unexpected keys when strict=True.
        load_model(model, model_file, strict=strict, device=map_location)
        model.to(map_location)  # buffers and parameters alike
        model.eval()
        return model
