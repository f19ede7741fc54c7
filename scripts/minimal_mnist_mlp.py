"""The shortest honest hand-written MNIST script: the baseline of benchmark.py's whole-process rows (issue #21).

    python scripts/minimal_mnist_mlp.py data            # the folder holding MNIST/raw/

Reads torchvision's IDX files into memory, trains the MLP 784-256-128-10 with Adam (batch 64) for one epoch,
validates on the 10% of the training images dl-run holds out, then scores the official test split: what
`dl-run dataset=mnist model=mlp model.hidden=[256,128] trainer.batch_size=64 trainer.epochs=1` does, without
anything around it.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (MNIST's format): a magic number whose last byte is the rank, the sizes, then unsigned bytes."""
    raw = path.read_bytes()
    rank = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape).copy())


def accuracy_and_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def main() -> None:
    raw = Path(sys.argv[1] if len(sys.argv) > 1 else "data") / "MNIST" / "raw"
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    torch.manual_seed(0)
    x = read_idx(raw / "train-images-idx3-ubyte").float().div_(255).sub_(0.1307).div_(0.3081).reshape(-1, 784)
    y = read_idx(raw / "train-labels-idx1-ubyte").long()
    x_test = read_idx(raw / "t10k-images-idx3-ubyte").float().div_(255).sub_(0.1307).div_(0.3081).reshape(-1, 784)
    y_test = read_idx(raw / "t10k-labels-idx1-ubyte").long()
    order = torch.randperm(len(x))
    n_val = len(x) // 10
    x_val, y_val, x_train, y_train = x[order[:n_val]], y[order[:n_val]], x[order[n_val:]], y[order[n_val:]]

    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                                torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        for idx in torch.randperm(len(x_train)).split(64):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val_loss, val_accuracy = accuracy_and_loss(model, x_val, y_val)
        print(f"epoch {epoch + 1}: val loss {val_loss:.4f}, val accuracy {val_accuracy:.4f}")
    test_loss, test_accuracy = accuracy_and_loss(model, x_test, y_test)
    print(f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f}")


if __name__ == "__main__":
    main()
