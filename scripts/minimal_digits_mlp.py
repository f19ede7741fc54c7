"""The shortest honest hand-written script for dl-run's default experiment: benchmark.py's baseline (issue #21).

    python scripts/minimal_digits_mlp.py

scikit-learn's 8x8 digits, pixels scaled to 0..1, split 65/15/20 (train/val/test) as dl-run splits them; the MLP
64-128-64-10 with Adam (batch 32) for 50 epochs, validating each epoch and keeping the best weights, then scoring
the test split with them: what plain `dl-run` does, without anything around it.
"""

import copy
import sys

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits


def loss_and_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    torch.manual_seed(0)
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    order = torch.randperm(len(x))
    n_test, n_val = int(0.2 * len(x)), int(0.15 * len(x))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]

    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    best_loss, best_weights = float("inf"), None
    for epoch in range(epochs):
        for idx in train[torch.randperm(len(train))].split(32):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val_loss, val_accuracy = loss_and_accuracy(model, x[val], y[val])
        if val_loss < best_loss:
            best_loss, best_weights = val_loss, copy.deepcopy(model.state_dict())
        print(f"epoch {epoch + 1}: val loss {val_loss:.4f}, val accuracy {val_accuracy:.4f}")
    model.load_state_dict(best_weights)
    test_loss, test_accuracy = loss_and_accuracy(model, x[test], y[test])
    print(f"test loss {test_loss:.4f}, test accuracy {test_accuracy:.4f} (best epoch's weights)")


if __name__ == "__main__":
    main()
