import math

import pytest
import torch

from scalavit.losses import full_network_loss, kl_divergence, soft_cross_entropy, sub_network_loss


def log_softmax(row):
    total = math.log(sum(math.exp(v) for v in row))
    return [v - total for v in row]


STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [0.5, 0.5, 0.0]]
TARGET = [[0.0, 0.9, 0.1], [0.05, 0.05, 0.9]]


def by_hand_cross_entropy(logits, target):
    return sum(-sum(t * l for t, l in zip(tr, log_softmax(lr))) for lr, tr in zip(logits, target)) / len(logits)


def by_hand_kl(student, teacher):
    total = 0.0
    for s, t in zip(student, teacher):
        ls, lt = log_softmax(s), log_softmax(t)
        total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))
    return total / len(student)


def test_soft_cross_entropy_by_hand():
    assert soft_cross_entropy(torch.tensor(STUDENT), torch.tensor(TARGET)).item() == pytest.approx(
        by_hand_cross_entropy(STUDENT, TARGET), rel=1e-6)
    hard = soft_cross_entropy(torch.tensor(STUDENT), torch.tensor([1, 2]))
    assert hard.item() == pytest.approx(by_hand_cross_entropy(STUDENT, [[0, 1, 0], [0, 0, 1]]), rel=1e-6)


def test_kl_divergence_by_hand_and_teacher_gets_no_gradient():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    loss = kl_divergence(student, teacher)
    assert loss.item() == pytest.approx(by_hand_kl(STUDENT, TEACHER), rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert kl_divergence(torch.tensor(TEACHER), torch.tensor(TEACHER)).item() == pytest.approx(0, abs=1e-7)


def test_full_network_loss_is_deits_hard_distillation_with_a_teacher():
    cls_logits, dist_logits = torch.tensor(STUDENT), torch.tensor(TEACHER)
    teacher = torch.tensor([[0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])  # argmax: classes 2 and 0
    expected = 0.5 * by_hand_cross_entropy(STUDENT, TARGET) + 0.5 * by_hand_cross_entropy(
        TEACHER, [[0, 0, 1], [1, 0, 0]])
    loss = full_network_loss((cls_logits, dist_logits), torch.tensor(TARGET), teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Without a teacher: plain cross-entropy on the class head only.
    assert full_network_loss((cls_logits, dist_logits), torch.tensor(TARGET)).item() == pytest.approx(
        by_hand_cross_entropy(STUDENT, TARGET), rel=1e-6)


def test_sub_network_loss_is_kl_on_the_distillation_head_plus_noise_calibration():
    student = (torch.tensor(STUDENT), torch.tensor(TEACHER))  # (class head, distillation head)
    teacher = (torch.zeros(2, 3), torch.tensor(STUDENT))
    target = torch.tensor(TARGET)
    kl = by_hand_kl(TEACHER, STUDENT)
    assert sub_network_loss(student, teacher, target, noise_calibration=False).item() == pytest.approx(kl, rel=1e-6)
    assert sub_network_loss(student, teacher, target).item() == pytest.approx(
        kl + by_hand_cross_entropy(STUDENT, TARGET), rel=1e-6)
    # A model without a distillation token transfers through its class head.
    plain = sub_network_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), target, noise_calibration=False)
    assert plain.item() == pytest.approx(by_hand_kl(STUDENT, TEACHER), rel=1e-6)
