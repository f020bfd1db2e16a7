"""Top-1 / top-5 accuracy of a model (or the supernet set to one arch) over a data loader.

`evaluate_accuracy` is what search's `supernet` score and `deployvit evaluate` call. Under torchrun
each rank evaluates its shard (`eval_loader`) and the counts are summed, so every rank gets the
accuracy of the whole split.
"""

from __future__ import annotations

import torch

from deployvit.train.data import one_line_errors
from deployvit.train.distributed import DistInfo, all_ranks_sum


def eval_loader(dataset, batch_size: int, info: DistInfo | None = None, num_workers: int = 0):
    """Sequential loader over this rank's shard (every image exactly once across ranks)."""
    indices = list(range(len(dataset)))
    if info is not None and info.distributed:
        indices = indices[info.rank :: info.world_size]
    subset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, loader, device: torch.device | str = "cpu", info: DistInfo | None = None) -> dict[str, float]:
    """{"top1", "top5" (percent), "n"}; top-5 is top-k with k = min(5, classes). Restores train mode."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0.0
    try:
        for x, y in one_line_errors(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x).float()
            k = min(5, logits.shape[-1])
            top = logits.topk(k, dim=-1).indices
            hits = top == y[:, None]
            correct1 += float(hits[:, 0].sum())
            correct5 += float(hits.any(dim=-1).sum())
            total += y.numel()
    finally:
        model.train(was_training)
    if info is not None:
        correct1, correct5, total = (all_ranks_sum(v, info) for v in (correct1, correct5, total))
    if total == 0:
        return {"top1": float("nan"), "top5": float("nan"), "n": 0}
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "n": int(total)}
