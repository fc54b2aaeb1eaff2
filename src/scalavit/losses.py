"""The training objectives: DeiT's for the full network, Scala's and US-Net's for the smaller ones.

Targets are soft (mixed, label-smoothed) class distributions, as timm's Mixup produces; the logits of a distilled
model in training come as (class head, distillation head).
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F

Logits = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


def class_head(logits: Logits) -> torch.Tensor:
    return logits[0] if isinstance(logits, tuple) else logits


def transfer_head(logits: Logits) -> torch.Tensor:
    """The head knowledge is transferred through: the distillation token's, or the class head without one."""
    return logits[1] if isinstance(logits, tuple) else logits


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a class distribution [B, K] (or class indices [B]), batch mean."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)), temperature 1, batch mean; the teacher gets no gradient."""
    return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher.detach(), dim=-1),
                    reduction='batchmean', log_target=True)


def full_network_loss(logits: Logits, target: torch.Tensor,
                      teacher_logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DeiT: cross-entropy on the class head; with a teacher, averaged with hard distillation on the other head."""
    if teacher_logits is None or not isinstance(logits, tuple):
        return soft_cross_entropy(class_head(logits), target)
    cls_logits, dist_logits = logits
    return 0.5 * soft_cross_entropy(cls_logits, target) + 0.5 * F.cross_entropy(dist_logits, teacher_logits.argmax(-1))


def sub_network_loss(logits: Logits, teacher: Logits, target: torch.Tensor,
                     noise_calibration: bool = True) -> torch.Tensor:
    """Scala: KL to the larger network's output on the transfer head, plus ground-truth cross-entropy on the class
    head (Noise Calibration, weight 1)."""
    loss = kl_divergence(transfer_head(logits), transfer_head(teacher))
    if noise_calibration:
        loss = loss + soft_cross_entropy(class_head(logits), target)
    return loss
