"""Training steps per second of two course models, float32 against mixed precision (AMP), through the
course's own training step (`coursekit.train.Trainer.train_step`): `python benchmarks/amp.py`.

On a CUDA machine it times float32 and AMP on the GPU, and float32 on the CPU for scale; elsewhere the
CPU alone (AMP needs CUDA). Models: the ResNet-18 classifier of notebook 01 (64 px, batch 64) and the
U-Net of notebook 06 (segmentation-models-pytorch, ResNet-18 encoder, 128 px, batch 16). Prints a
Markdown table (the README's "On a GPU" section). Random inputs: only the speed is measured.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from coursekit.train import Trainer, classification_step


def resnet18_classifier() -> tuple[nn.Module, Callable, tuple[torch.Tensor, torch.Tensor]]:
    """Notebook 01's model and step; one batch: images ``[64, 3, 64, 64]``, labels ``[64]``."""
    from torchvision.models import resnet18

    batch = (torch.rand(64, 3, 64, 64), torch.randint(0, 10, (64,)))
    return resnet18(num_classes=10), classification_step, batch


def unet() -> tuple[nn.Module, Callable, tuple[torch.Tensor, torch.Tensor]]:
    """Notebook 06's U-Net; one batch: images ``[16, 3, 128, 128]``, masks ``[16, 128, 128]`` (3 classes)."""
    import segmentation_models_pytorch as smp

    def step(model: nn.Module, batch, device) -> dict[str, torch.Tensor]:
        images, masks = (t.to(device) for t in batch)
        return {"loss": nn.functional.cross_entropy(model(images), masks)}

    model = smp.Unet("resnet18", encoder_weights=None, classes=3)
    return model, step, (torch.rand(16, 3, 128, 128), torch.randint(0, 3, (16, 128, 128)))


MODELS = {"ResNet-18, 64 px, batch 64 (01)": resnet18_classifier, "U-Net, 128 px, batch 16 (06)": unet}


def steps_per_second(build: Callable, device: str, amp: bool, seconds: float) -> float:
    """Optimizer steps per second after 5 warm-up steps, timed over about ``seconds``."""
    torch.manual_seed(0)
    model, step, batch = build()
    trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-3), step, device=device, amp=amp)
    for _ in range(5):  # cuDNN's algorithm search and the allocator's first blocks are not the steady state
        trainer.train_step(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        trainer.train_step(batch)  # returns floats: each step already waits for the GPU
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per cell (default 5)")
    parser.add_argument("--no-cpu", action="store_true", help="GPU columns only (the CPU is busy elsewhere)")
    args = parser.parse_args()
    settings = [] if args.no_cpu and torch.cuda.is_available() else [("cpu", False)]
    if torch.cuda.is_available():
        settings = [("cuda", False), ("cuda", True), *settings]
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"CPU: {torch.get_num_threads()} threads")
    header = [f"{d} {'AMP' if a else 'float32'}" for d, a in settings]
    print("| steps/s | " + " | ".join(header) + " |")
    print("|---|" + "---:|" * len(header))
    for name, build in MODELS.items():
        rates = [steps_per_second(build, d, a, args.seconds) for d, a in settings]
        print(f"| {name} | " + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
