"""Distillation (train.distill_from): the loss, the teachers' z-scored block, a tiny run end to end."""

from __future__ import annotations

import pytest
import torch
from helpers import DIM, fit_quietly, setup_run, short_run_overrides

from itm.data.synthetic import synthetic_split
from itm.data.vocab import Vocab
from itm.errors import ConfigError
from itm.evaluation.metrics import chance_metrics
from itm.losses import distillation
from itm.training.distill import load_teachers, zscored_mean


def test_distillation_is_zero_only_when_the_student_matches_the_teacher():
    teacher = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    assert distillation(teacher * 0.05, teacher, 0.05).abs() < 1e-6  # student logits = scores / temperature
    shifted = teacher + torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
    scores = (shifted * 0.05).requires_grad_(True)
    loss = distillation(scores, teacher, 0.05)
    assert loss > 0
    loss.backward()
    assert scores.grad.abs().sum() > 0
    # a constant added to a teacher row changes nothing in the rows' softmax, but the columns see it
    rowwise = teacher + torch.arange(6.0)[:, None]
    assert distillation(teacher * 0.05, rowwise, 0.05) > 0


def test_the_teachers_mean_does_not_care_about_each_members_scale():
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(2))
    b = torch.randn(5, 5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(zscored_mean([a, b]), zscored_mean([10 * a + 3, 0.1 * b - 1]))


def test_a_student_trains_against_a_teacher_and_bad_teachers_are_one_line(tmp_path):
    teacher_run, train, val = setup_run(tmp_path / "teacher", "train.loss=infonce", n_train=64, n_val=8)
    fit_quietly(teacher_run, train, val)
    _, vocab = synthetic_split(64, seed=0, region_dim=DIM)
    settings = {"backbone": "synthetic"}
    teachers = load_teachers([str(tmp_path / "teacher")], vocab, settings, 0.25)
    student, train, val = setup_run(tmp_path / "student", "train.loss=infonce", "train.epochs=3", n_train=64,
                                    n_val=32, seed=0)
    student.teacher = teachers
    from itm.training.loop import training_batch

    owner = torch.as_tensor(train.caption_to_image)
    caps = torch.arange(16)

    def loss(teacher):
        batch = training_batch(student.model, train, caps, owner, student.cfg, torch.Generator().manual_seed(0),
                               teacher)
        return float(student.model.training_loss(batch).detach())

    assert loss(teachers) > loss(None)  # the KL term is added (it is positive for an untrained student)
    result = fit_quietly(student, train, val)
    # random scores on these 32 images x 5 captions expect rsum 95.9; three epochs lifted the student to
    # 186-308 over seeds 0-9 (205 here, seed 0), so 50 above chance leaves room for another CPU's arithmetic
    assert result["epochs"] == 3 and result["best_rsum"] > chance_metrics(32, 5)["rsum"] + 50
    with pytest.raises(ConfigError, match="no such checkpoint"):
        load_teachers([str(tmp_path / "none.pt")], vocab, settings, 0.25)
    with pytest.raises(ConfigError, match="other image features"):
        load_teachers([str(tmp_path / "teacher")], vocab, {"backbone": "efficientnet_lite0"}, 0.25)
    other_vocab = Vocab.from_list([*vocab.to_list(), "zebra"])  # trained on other captions: other ids
    with pytest.raises(ConfigError, match="another training vocabulary"):
        load_teachers([str(tmp_path / "teacher")], other_vocab, settings, 0.25)


def test_teachers_of_another_model_get_the_streams_they_read(tmp_path):
    """An MLASM teacher reads the whole-image vector a CAAN student does not: the step reads it for it."""
    teacher_run, train, val = setup_run(tmp_path / "teacher", "train.loss=infonce", "train.epochs=1", n_train=64,
                                        n_val=8, model_overrides=short_run_overrides("mlasm"))
    fit_quietly(teacher_run, train, val)
    _, vocab = synthetic_split(64, seed=0, region_dim=DIM)
    teachers = load_teachers([str(tmp_path / "teacher")], vocab, {"backbone": "synthetic"}, 0.25)
    student, train, val = setup_run(tmp_path / "student", "train.loss=infonce", "train.epochs=1", n_train=64,
                                    n_val=8, model_overrides=short_run_overrides("caan"))
    assert "whole" in teachers.image_streams and "whole" not in student.model.image_streams
    student.teacher = teachers
    assert fit_quietly(student, train, val)["epochs"] == 1
