"""Training (neurorit.training) on the tiny models: config, data, losses, every method, the
Neuro-RIT invariants (frozen weights bit-identical after every stage, masked neurons at zero, the
baked checkpoint equal to the hooked model), faults, and a real job killed and resumed."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neurorit import jobs, store
from neurorit.configs import load_yaml
from neurorit.cli import main
from neurorit.data import Passage, RagExample, demo_examples
from neurorit.errors import ArtifactError, ConfigError, DataError, ModelMismatchError
from neurorit.evaluation import EvalConfig
from neurorit.masks import NeuronMask
from neurorit.mining import MinedNeurons
from neurorit.models import load_model, model_identity, neuron_site
from neurorit.neurons import NeuronSet
from neurorit.prompts import PromptConfig
from neurorit.training import (
    CheckpointError, RunLockedError, TrainConfig, TrainingDivergedError, TrainReport, load_report, read_metrics,
    read_status, run_training, submit_training,
)
from neurorit.training import checkpoints as ckpt
from neurorit.training import loop
from neurorit.training.data import (
    build_item, end_of_turn_ids, items_for_step, prepare_data, split_examples, split_of,
)
from neurorit.training.methods import (
    hf_name, mlp_prefix, named_parameters, plan_for, stage_parameter_names, top_layers,
)
from scale import assert_close_in_scale


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(loop.THROTTLE_ENV, raising=False)
    return tmp_path / "cache"


def small(**overrides) -> TrainConfig:  # type: ignore[no-untyped-def]
    """A config that trains the tiny models in about a second a step on a busy CPU (full unless mined)."""
    base = dict(
        method="neuro_rit" if "mined" in overrides or "mask" in overrides else "full", max_steps=4, batch_size=2, grad_accum=1, n_distractors=(1, 2), prompt=PromptConfig(max_passage_tokens=24),
        eval=EvalConfig(views=("relevant", "noisy"), noise_levels=(2,), max_new_tokens=3,
                        prompt=PromptConfig(max_passage_tokens=24)),
        n_eval=2, checkpoint_every=2, dev_every=0, threads=1, lr=1e-3,
    )
    base.update(overrides)
    return TrainConfig(**base)


def fresh(folder: Path):  # type: ignore[no-untyped-def]
    """An untrained copy of a tiny model (training changes its model in place)."""
    return load_model(str(folder), device="cpu", dtype="float32")


def fake_mined(model, folder: Path, *, seed: int = 0) -> Path:  # type: ignore[no-untyped-def]
    """A MinedNeurons artifact for the model with random sets (layer 1 holds most relevant-exclusive)."""
    ident = model_identity(model)
    g = torch.Generator().manual_seed(seed)
    relevant = torch.rand(ident.n_layers, ident.d_mlp, generator=g) < 0.25
    relevant[1, :20] = True
    irrelevant = torch.rand(ident.n_layers, ident.d_mlp, generator=g) < 0.25
    mined = MinedNeurons(
        NeuronSet(relevant, "relevant"), NeuronSet(irrelevant, "irrelevant"), relevant.float(), irrelevant.float(),
        relevant.float(), irrelevant.float(), ("x",), ident, {"test": True},
    )
    return mined.save(folder)


def state(model) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {n: p.detach().clone() for n, p in named_parameters(model).items()}


# ---- config -------------------------------------------------------------------------------------


def test_config_round_trips_through_json_and_hashes_stably():
    config = small(method="lora", target_layers=(0, 1), stage2_loss="ce_kl")
    data = json.loads(json.dumps(config.to_dict()))
    again = TrainConfig.from_dict(data)
    assert again == config and again.hash() == config.hash()
    assert again.eval == config.eval and again.prompt == config.prompt
    assert small(lr=2e-3).hash() != config.hash() != small(method="full").hash()
    assert TrainConfig(method="full").learning_rate == 1e-4 and TrainConfig(method="lora").learning_rate == 2e-4
    assert TrainConfig(method="full", max_steps=40).stage_steps() == (20, 20)
    assert TrainConfig.from_dict({"method": "full", "lr": "1e-4"}).lr == 1e-4  # YAML reads 1e-4 as a string
    tiny_lr = small(method="lora", lr=1e-5, target_layers=(1,))
    path = store.cache_root() / "c.json"
    store.write_json(path, tiny_lr.to_dict())  # what submit_training writes, read as the CLI reads it
    assert TrainConfig.from_dict(load_yaml(path)).hash() == tiny_lr.hash()
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['nope'\]"):
        TrainConfig.from_dict({"nope": 1})


@pytest.mark.parametrize("field,value,allowed", [
    ("method", "dpo", "one of ['neuro_rit', 'full', 'lora', 'retrobust', 'random_mask', 'ralm']"),
    ("lr", -1e-4, "a finite number > 0"),
    ("lr", float("nan"), "a finite number > 0"),
    ("max_steps", 0, "an integer >= 1"),
    ("stage2_loss", "mse", "one of ['ce', 'kl', 'ce_kl']"),
    ("n_distractors", (), "a non-empty list"),
])
def test_config_refuses_bad_values_naming_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**{"method": "full", field: value})
    message = str(info.value)
    assert f"TrainConfig.{field} = {value!r}" in message and allowed in message


def test_masked_methods_need_mined_neurons_or_a_mask_and_layers():
    with pytest.raises(ConfigError, match="TrainConfig.mined = None.*neuro_rit.*MinedNeurons folder"):
        TrainConfig(method="neuro_rit")
    TrainConfig(method="random_mask", mask="some/mask", target_layers=(1,))  # explicit: fine
    with pytest.raises(ConfigError, match="dev_fraction \\+ test_fraction"):
        TrainConfig(method="full", dev_fraction=0.5, test_fraction=0.5)


# ---- data ---------------------------------------------------------------------------------------


def test_split_is_a_stable_function_of_the_id():
    ids = [f"q{i}" for i in range(2000)]
    splits = [split_of(i, seed=0) for i in ids]
    assert splits == [split_of(i, seed=0) for i in ids]
    share = {name: splits.count(name) / len(ids) for name in ("train", "dev", "test")}
    assert abs(share["test"] - 0.2) < 0.03 and abs(share["dev"] - 0.1) < 0.03
    assert splits != [split_of(i, seed=1) for i in ids]
    examples = demo_examples()
    config = small(method="full")
    full = split_examples(examples, config)
    part = split_examples(examples[::2], config)  # fewer examples: nobody changes side
    for name in ("train", "dev", "test"):
        assert {e.id for e in part[name]} <= {e.id for e in full[name]}


def test_training_input_is_prompt_then_first_alias_then_end_of_turn(tokenizer):
    example = demo_examples()[0]
    config = small(method="full")
    end = end_of_turn_ids(tokenizer)
    assert tokenizer.decode(list(end)) == "<|im_end|>"
    item = build_item(example, "noisy", 2, 0, tokenizer, config)
    answer = tuple(tokenizer(example.answers[0], add_special_tokens=False).input_ids)
    assert item.target_ids == answer + end
    assert item.input_ids[: len(item.prompt_ids)] == item.prompt_ids
    assert item.loss_mask == (False,) * len(item.prompt_ids) + (True,) * len(item.target_ids)
    assert item.n_distractors == 2 and tokenizer.decode(list(item.prompt_ids)).endswith("assistant\n")
    shortest = build_item(example, "noisy", 2, 0, tokenizer, small(method="full", target_alias="shortest"))
    assert tokenizer.decode(list(shortest.target_ids[:-1])) == min(example.answers, key=len)


def test_a_long_noisy_or_irrelevant_prompt_drops_distractors_until_it_fits(tokenizer):
    example = demo_examples()[0]
    config = small(method="full")
    full = {view: build_item(example, view, 3, 0, tokenizer, config) for view in ("noisy", "irrelevant")}
    for view, item in full.items():
        assert item.n_distractors == 3
        limit = len(item.input_ids) - 1  # one token short of the 3-distractor prompt
        fitted = build_item(example, view, 3, 0, tokenizer, small(method="full", max_prompt_tokens=limit))
        assert fitted.n_distractors == 2 and len(fitted.input_ids) <= limit
    one = build_item(example, "irrelevant", 1, 0, tokenizer, config)
    with pytest.raises(DataError, match="irrelevant prompt is .* over TrainConfig.max_prompt_tokens"):
        build_item(example, "irrelevant", 3, 0, tokenizer, small(method="full", max_prompt_tokens=len(one.input_ids) - 1))


def test_items_for_a_step_are_deterministic_and_vary_the_relevant_position(tokenizer):
    config = small(method="full", n_distractors=(3,), batch_size=1, grad_accum=1)
    data = prepare_data(demo_examples(), tokenizer, config)
    n = len(data.train)
    assert [i.input_ids for i in items_for_step(5, data, tokenizer, config)] == \
        [i.input_ids for i in items_for_step(5, data, tokenizer, config)]
    epoch0 = {i.example_id: i for s in range(n) for i in items_for_step(s, data, tokenizer, config)}
    epoch1 = {i.example_id: i for s in range(n, 2 * n) for i in items_for_step(s, data, tokenizer, config)}
    assert set(epoch0) == set(epoch1) == {e.id for e in data.train}  # every example once per epoch
    moved = sum(epoch0[k].prompt_ids != epoch1[k].prompt_ids for k in epoch0)
    assert moved >= n // 3  # the relevant passage's position is drawn again each epoch


def test_distractors_come_from_the_example_then_other_examples_of_its_split(tokenizer):
    def nq(i: int) -> RagExample:  # NQ-open style: one gold passage, no distractor
        return RagExample(f"nq-{i}", f"question {i}?", (f"answer{i}",),
                          (Passage(f"passage {i} says answer{i}.", f"T{i}", True),))

    examples = [nq(i) for i in range(60)]
    config = small(method="full", n_distractors=(2,))
    data = prepare_data(examples, tokenizer, config)
    for split in (data.train, data.dev, data.test):
        own_ids = {e.id.split("-")[1] for e in split}
        for example in split:
            distractors = example.irrelevant_passages
            assert len(distractors) >= 2
            assert all(p.title[1:] in own_ids and p.title[1:] != example.id.split("-")[1] for p in distractors)
    demo = demo_examples()[0]  # has its own irrelevant passages: they come first
    item = build_item(demo, "noisy", 2, 0, tokenizer, config)
    text = tokenizer.decode(list(item.prompt_ids))
    assert all(p.text[:15] in text for p in demo.irrelevant_passages[:2])


def test_a_dataset_with_no_usable_examples_is_a_data_error(tokenizer):
    unflagged = [RagExample(f"u{i}", f"q{i}?", ("a",), (Passage("nothing here"),)) for i in range(20)]
    with pytest.raises(DataError, match="no usable training examples: 20 loaded.*no relevant passage"):
        prepare_data(unflagged, tokenizer, small(method="full"))
    with pytest.raises(DataError, match="no usable training examples.*max_prompt_tokens = 16"):
        prepare_data(demo_examples(), tokenizer, small(method="full", max_prompt_tokens=16))
    with pytest.raises(DataError, match="gave no examples"):
        prepare_data([], tokenizer, small(method="full"))


# ---- losses -------------------------------------------------------------------------------------


def test_answer_loss_matches_a_per_item_computation_and_kl_to_itself_is_zero(tiny_llama, tokenizer):
    config = small(method="full")
    data = prepare_data(demo_examples(), tokenizer, config)
    items = items_for_step(0, data, tokenizer, config, with_teacher=True)
    with torch.no_grad():
        batched, n = loop.answer_loss(tiny_llama, items)
        expected, count = 0.0, 0
        for item in items:  # independent: full logits, one unpadded sequence at a time
            logits = tiny_llama(torch.tensor([item.input_ids]))[0].float()
            logp = logits[len(item.prompt_ids) - 1 : -1].log_softmax(-1)
            expected -= float(logp.gather(-1, torch.tensor(item.target_ids)[:, None]).sum())
            count += len(item.target_ids)
        assert_close_in_scale(float(batched), expected, rel=1e-4)
        assert n == count
        same = [type(i)(i.example_id, i.view, i.n_distractors, i.prompt_ids, i.target_ids, i.prompt_ids) for i in items]
        kl, _ = loop.answer_loss(tiny_llama, same, loss="kl", teacher=tiny_llama.original_model)
        torch.testing.assert_close(float(kl), 0.0, rtol=0, atol=1e-5)
        kl_other, _ = loop.answer_loss(tiny_llama, items, loss="kl", teacher=tiny_llama.original_model)
        assert float(kl_other) > 1e-4  # the relevant-only view gives another distribution


# ---- methods ------------------------------------------------------------------------------------


def test_target_layers_are_the_layers_with_most_relevant_exclusive_neurons(tiny_llama, tmp_path):
    assert top_layers([3, 9, 9, 1, 7], 3) == (1, 2, 4)
    mined = fake_mined(tiny_llama, tmp_path / "mined")
    plan = plan_for(small(mined=str(mined), n_target_layers=1), tiny_llama)
    assert plan.target_layers == (1,)
    assert [s.name for s in plan.stages] == ["denoise", "distill"] and sum(s.steps for s in plan.stages) == 4
    loaded = MinedNeurons.load(mined)
    assert torch.equal(plan.mask.scale == 0, loaded.irrelevant_exclusive.grid)
    explicit = plan_for(small(mined=str(mined), target_layers=(0,)), tiny_llama)
    assert explicit.target_layers == (0,)
    names = stage_parameter_names(tiny_llama, explicit.stages[0])
    prefix = mlp_prefix(tiny_llama, 0)
    assert names and all(n.startswith(prefix) for n in names)
    assert any(hf_name(neuron_site(tiny_llama).down_proj_name(0)) == n for n in names)
    control = plan_for(small(method="random_mask", mined=str(mined), n_target_layers=1), tiny_llama)
    assert control.mask.counts_per_layer() == plan.mask.counts_per_layer()
    assert not torch.equal(control.mask.scale, plan.mask.scale)


def test_neuro_rit_keeps_frozen_weights_bit_identical_masked_neurons_at_zero_and_bakes(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = fresh(tiny_llama_dir)
    mined_dir = fake_mined(model, tmp_path / "mined")
    config = small(mined=str(mined_dir), n_target_layers=1, stage2_loss="ce_kl", dev_every=2)
    plan = plan_for(config, model)
    mask = plan.mask
    trainable = set(stage_parameter_names(model, plan.stages[0]))
    before = state(model)
    site = neuron_site(model)
    seen: list[str] = []

    def check(stage: str, tuned) -> None:  # type: ignore[no-untyped-def]
        seen.append(stage)
        now = state(tuned)
        assert set(now) == set(before)
        for name, value in now.items():
            if name in trainable:
                assert not torch.equal(value, before[name]), f"{name} did not train in {stage}"
            else:
                assert torch.equal(value, before[name]), f"frozen {name} changed in {stage}"
        captured = {}  # the mask is on during training: the neurons after it are zero
        hooks = [(site.hook_name(l), lambda a, hook, l=l: captured.__setitem__(l, a.detach())) for l in mask.layers]
        with torch.no_grad(), tuned.hooks(fwd_hooks=hooks):
            tuned(torch.tensor([[1, 2, 3, 4, 5]]))
        for layer in mask.layers:
            off = mask.scale[layer] == 0
            assert bool((captured[layer][..., off] == 0).all()) and bool(captured[layer][..., ~off].abs().sum() > 0)

    report = run_training(model, demo_examples(), config, tmp_path / "run", on_stage_end=check)
    assert seen == ["denoise", "distill"] and report.status == "done" and report.steps == 4
    assert report.target_layers == (1,) and report.trainable_params == sum(before[n].numel() for n in trainable)
    assert 0 < report.trainable_share < 0.01 and report.stages[0].trainable_share == report.trainable_share
    assert report.peak_memory_bytes > 0 and report.step_time_s > 0 and report.wall_time_s > 0
    assert report.eval_before is not None and report.eval_after is not None
    assert {(v, k) for v, k in zip(report.table()["view"], report.table()["n_distractors"])} == {("relevant", 0), ("noisy", 2)}
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics if m["event"] == "step"] == [1, 2, 3, 4]
    assert all(math.isfinite(m["loss"]) and m["eta_s"] >= 0 for m in metrics if m["event"] == "step")
    assert [m["step"] for m in metrics if m["event"] == "dev"] == [2, 4]
    assert read_status(tmp_path / "run")["state"] == "done"
    assert load_report(tmp_path / "run").to_json() == report.to_json()

    # the baked checkpoint reproduces the tuned model with the mask hooked in
    baked = AutoModelForCausalLM.from_pretrained(report.final_checkpoint, attn_implementation="eager",
                                                 dtype=torch.float32)
    ids = torch.tensor([list(range(5, 40))])
    with torch.no_grad():
        with mask.applied(model, strict=False):
            hooked = model(ids)
        plain = model(ids)
        from_disk = baked(ids).logits
    assert_close_in_scale(from_disk, hooked, rel=1e-4)
    assert (from_disk - plain).abs().max() > 1e-3
    for layer in mask.layers:  # what reads a masked neuron is zero: it stays off in any engine
        weight = baked.state_dict()[site.down_proj_name(layer)]
        off = mask.scale[layer] == 0
        assert bool((weight.index_select(site.neuron_axis, off.nonzero().flatten()) == 0).all())


@pytest.mark.parametrize("method", ["lora", "full", "retrobust", "ralm"])
def test_baselines_share_the_loop(method, tiny_llama_dir, tmp_path):
    model = fresh(tiny_llama_dir)
    before = state(model)
    stage_states = {}
    config = small(method=method, max_steps=2, checkpoint_every=0, eval_before=method == "ralm", n_eval=1)
    report = run_training(model, demo_examples(), config, tmp_path / "run",
                          on_stage_end=lambda name, m: stage_states.setdefault(name, state(m)))
    after = state(model)
    assert report.status == "done" and set(after) == set(before)
    if method == "ralm":
        assert report.steps == 0 and report.trainable_params == 0 and report.eval_after is report.eval_before
        assert all(torch.equal(after[n], before[n]) for n in before) and not (tmp_path / "run" / "final").exists()
        return
    assert report.steps == 2 and (tmp_path / "run" / "final" / "config.json").is_file()
    changed = {n for n in before if not torch.equal(after[n], before[n])}
    if method == "full":
        assert report.trainable_share == 1.0 and changed == set(before)
    else:  # LoRA adapters: the base stays frozen while training, then the adapters merge into it
        during = stage_states["finetune"]  # peft moved each base weight under `.base_layer`
        assert any(".lora_A." in n for n in during) and any(".lora_B." in n for n in during)
        base = {n.replace(".base_layer", ""): v for n, v in during.items() if ".lora_" not in n}
        assert set(base) == set(before) and all(torch.equal(base[n], before[n]) for n in before)
        assert 0 < report.trainable_share < 0.05
        assert changed and all(".mlp." in n or ".self_attn." in n for n in changed)
        assert not any(".lora_" in n for n in after)


def test_retrobust_mixes_relevant_noisy_and_irrelevant_inputs(tokenizer):
    config = small(method="retrobust", batch_size=4, grad_accum=2)
    data = prepare_data(demo_examples(), tokenizer, config)
    views = [i.view for s in range(6) for i in items_for_step(s, data, tokenizer, config)]
    assert {"relevant", "noisy", "irrelevant"} == set(views)
    assert 0.3 < views.count("relevant") / len(views) < 0.7


# ---- faults -------------------------------------------------------------------------------------


def test_a_mask_or_mined_sets_from_another_model_are_refused(tiny_llama_dir, tiny_gpt2, tmp_path):
    model = fresh(tiny_llama_dir)
    other = NeuronMask.silencing(NeuronSet.from_neurons([(0, 1)], 2, 48), tiny_gpt2)
    other.save(tmp_path / "gpt2-mask")
    config = small(method="neuro_rit", mask=str(tmp_path / "gpt2-mask"), target_layers=(0,))
    with pytest.raises(ModelMismatchError, match="mined on another model"):
        run_training(model, demo_examples(), config, tmp_path / "run-a")
    torch.manual_seed(1)
    sibling = fresh(tiny_llama_dir)
    with torch.no_grad():
        next(iter(sibling.parameters())).add_(0.5)  # same shape, other weights
    mined = fake_mined(sibling, tmp_path / "mined")
    with pytest.raises(ModelMismatchError, match="mined on weights .* mined on another model"):
        run_training(model, demo_examples(), small(mined=str(mined)), tmp_path / "run-b")


def test_disk_full_while_writing_a_checkpoint_leaves_the_previous_one_intact(tiny_llama_dir, tmp_path, monkeypatch):
    real = ckpt._write_tensors
    calls = {"n": 0}

    def filling_disk(path: Path, tensors, metadata=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] <= 3:  # the first checkpoint (3 files) goes through
            return real(path, tensors, metadata)
        path.write_bytes(b"\0" * 100)  # half a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ckpt, "_write_tensors", filling_disk)
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"checkpoint step 4 .* the disk is full\. Nothing was left there; "
                                              r"the last good checkpoint is step 2"):
        run_training(fresh(tiny_llama_dir), demo_examples(), small(method="full", eval_before=False), run)
    assert [c.step for c in ckpt.list_checkpoints(run)] == [2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]  # no temp folder left
    params, optimizer, _ = ckpt.read_checkpoint(ckpt.latest_checkpoint(run))
    assert params and optimizer["state"] and all(bool(torch.isfinite(t).all()) for t in params.values())
    status = read_status(run)
    assert status["state"] == "failed" and "disk is full" in status["error"] and status["last_checkpoint"] == 2


def test_a_nan_loss_stops_the_run_failed_and_keeps_the_last_good_checkpoint(tiny_llama_dir, tmp_path, monkeypatch):
    real = loop.answer_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss, n = real(*args, **kwargs)
        return (loss * math.nan if calls["n"] == 3 else loss), n  # step 3 (one micro-batch a step)

    monkeypatch.setattr(loop, "answer_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"the loss is nan at step 3 \(stage finetune\).*last good "
                                                    r"checkpoint is step 2"):
        run_training(fresh(tiny_llama_dir), demo_examples(), small(method="full", eval_before=False), run)
    assert [c.step for c in ckpt.list_checkpoints(run)] == [2]
    assert read_status(run)["state"] == "failed" and not (run / "final").exists()
    assert [m["step"] for m in read_metrics(run) if m["event"] == "step"] == [1, 2]


def test_a_huge_learning_rate_fails_the_job_with_a_clear_state(tiny_llama_dir, tmp_path):
    config = small(method="full", model=str(tiny_llama_dir), lr=1e30, max_grad_norm=None, checkpoint_every=1,
                   eval_before=False, max_steps=6)
    job, run = submit_training(config, tmp_path / "run")
    job = jobs.wait(job.id, timeout=180)
    assert job.state == "failed", job.log_tail()
    assert "at step" in job.error and ("nan" in job.error or "inf" in job.error or "non-finite" in job.error)
    assert read_status(run)["state"] == "failed" and not (run / "final").exists()
    good = ckpt.latest_checkpoint(run)
    assert good is not None and good.step < 6
    assert all(bool(torch.isfinite(t).all()) for t in ckpt.read_checkpoint(good)[0].values())


def test_a_second_writer_to_the_same_folder_is_refused_and_a_stale_lock_taken_over(tiny_llama_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ckpt.LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                 "job_id": "train-x", "since": time.time()}))
        with pytest.raises(RunLockedError, match=rf"output folder {run} is in use by another training process "
                                                 rf"\(pid {holder.pid}, job train-x.*neurorit jobs cancel train-x"):
            run_training(fresh(tiny_llama_dir), demo_examples(), small(method="ralm"), run)
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "config.json").exists()  # refused before writing anything
    report = run_training(fresh(tiny_llama_dir), demo_examples(), small(method="ralm", n_eval=1), run)  # stale
    assert report.status == "done" and not (run / ckpt.LOCK).exists()
    with pytest.raises(ArtifactError, match=rf"{run} already holds a run \(state done\); resume it"):
        run_training(fresh(tiny_llama_dir), demo_examples(), small(method="ralm", n_eval=1), run)
    with pytest.raises(ConfigError, match=r"holds a run of another config \(fields \['n_eval'\] differ\)"):
        run_training(fresh(tiny_llama_dir), demo_examples(), small(method="ralm", n_eval=2), run, resume=True)


# ---- a real job, killed and resumed -------------------------------------------------------------


def test_a_killed_training_job_resumes_to_the_uninterrupted_result(tiny_llama_dir, tmp_path, monkeypatch):
    mined = fake_mined(fresh(tiny_llama_dir), tmp_path / "mined")
    config = small(mined=str(mined), model=str(tiny_llama_dir), n_target_layers=1, max_steps=12, checkpoint_every=3,
                   stage2_loss="ce_kl", eval_before=False, n_eval=1, dev_every=3)
    run = tmp_path / "killed"
    monkeypatch.setenv(loop.THROTTLE_ENV, "0.4")  # slow steps so that the kill lands mid-run
    job, folder = submit_training(config, run)
    assert folder == run and job.state == "running"
    deadline = time.monotonic() + 180
    while ckpt.latest_checkpoint(run) is None:
        assert jobs.get(job.id).state == "running", jobs.get(job.id).log_tail()
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.1)
    with pytest.raises(RunLockedError, match=f"job {job.id}"):  # two writers: the second is refused
        run_training(fresh(tiny_llama_dir), demo_examples(), config, run)
    os.kill(job.pid, signal.SIGKILL)
    while jobs.get(job.id).state == "running":
        time.sleep(0.1)
    killed_at = ckpt.latest_checkpoint(run).step
    assert jobs.get(job.id).state == "failed" and 3 <= killed_at < 12
    assert read_status(run)["state"] == "interrupted" and load_report(run) is None
    monkeypatch.delenv(loop.THROTTLE_ENV)

    assert main(["resume", str(run), "--quiet"]) == 0  # stale lock taken over, continues from the checkpoint
    resumed = load_report(run)
    assert [m["step"] for m in read_metrics(run) if m["event"] == "resume"] == [killed_at]
    reference = run_training(fresh(tiny_llama_dir), demo_examples(), config, tmp_path / "straight")
    assert resumed.status == reference.status == "done" and resumed.steps == reference.steps == 12
    assert [s.final_loss for s in resumed.stages] == [s.final_loss for s in reference.stages]

    def losses(folder: Path) -> list[tuple[str, int, float]]:
        return [(m["event"], m["step"], m.get("loss", m.get("dev_loss"))) for m in read_metrics(folder)
                if m["event"] in ("step", "dev")]

    assert losses(run) == losses(tmp_path / "straight")  # bit-identical losses, every step
    from safetensors.torch import load_file

    a = load_file(run / "final" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical weights
    assert [r.answer for r in resumed.eval_after.results] == [r.answer for r in reference.eval_after.results]


# ---- report, CLI, accelerate --------------------------------------------------------------------


def test_train_report_round_trips_and_cli_train_prints_it(tiny_llama_dir, tmp_path, capsys):
    config_file = tmp_path / "train.yaml"
    config_file.write_text(f"method: ralm\nmodel: {tiny_llama_dir}\nn_eval: 1\nthreads: 1\n"
                           "prompt: {max_passage_tokens: 24}\neval: {max_new_tokens: 3, noise_levels: [2]}\n")
    assert main(["train", "--config", str(config_file), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "ralm: done, 0 steps" in out and f"run folder: {tmp_path / 'run'}" in out and "accuracy_before" in out
    report = load_report(tmp_path / "run")
    again = TrainReport.from_json(json.loads(json.dumps(report.to_json())))
    assert again.to_json() == report.to_json()
    row = report.summary_row()
    assert set(row) >= {"method", "trainable_%", "steps", "wall_time_s", "clean_acc", "noisy_k2_acc", "noisy_k4_acc"}
    assert main(["train", "--method", "dpo", "--out", str(tmp_path / "bad")]) == 2
    assert "TrainConfig.method = 'dpo' is not allowed" in capsys.readouterr().err

    # `neurorit submit train ...` refuses a bad config before queueing, and runs a good one as a job
    assert main(["submit", "train", "--method", "dpo"]) == 2 and jobs.list_jobs() == []
    assert "TrainConfig.method = 'dpo'" in capsys.readouterr().err
    assert main(["submit", "train", "--config", str(config_file), "--out", str(tmp_path / "job"), "--quiet"]) == 0
    job = jobs.wait(capsys.readouterr().out.split()[1], timeout=180)
    assert job.state == "done", job.log_tail()
    assert job.artifacts["run"] == str(tmp_path / "job") and Path(job.artifacts["report"]).is_file()
    assert load_report(tmp_path / "job").eval_before.to_json()["results"] == report.eval_before.to_json()["results"]


def test_train_with_the_default_folder_returns_a_finished_run_without_running_it(tiny_llama_dir, monkeypatch):
    from neurorit.training import default_run_dir, train

    config = small(method="ralm", model=str(tiny_llama_dir), n_eval=1)
    first = train(config)
    assert Path(first.run_dir) == default_run_dir(config) and first.status == "done"
    monkeypatch.setattr(loop, "_load_model", lambda *args: pytest.fail("a finished run must not load the model"))
    assert train(config).to_json() == first.to_json()


def test_accelerate_config_for_fsdp_and_its_launch_command(tiny_llama, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    from neurorit.training.accelerate import launch_command, launch_line, layer_class_to_wrap, write_accelerate_config

    layer = layer_class_to_wrap(tiny_llama)
    assert layer == "LlamaDecoderLayer"
    path = write_accelerate_config(tmp_path / "fsdp.yaml", num_processes=4, fsdp=True, layer_cls=layer)
    parsed = load_config_from_file(str(path))  # accelerate's own reader accepts it
    assert parsed.distributed_type == "FSDP" and parsed.num_processes == 4 and parsed.mixed_precision == "bf16"
    assert parsed.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert parsed.fsdp_config["fsdp_use_orig_params"] is True  # frozen + trainable parameters in one flat buffer
    ddp = load_config_from_file(str(write_accelerate_config(tmp_path / "ddp.yaml", num_processes=2)))
    assert ddp.distributed_type == "MULTI_GPU" and not ddp.fsdp_config
    argv = launch_command(path, tmp_path / "train.json", tmp_path / "run")
    assert launch_line(argv).startswith(f"accelerate launch --config_file {path} -m neurorit train --config ")
    with pytest.raises(ConfigError, match="layer_cls"):
        write_accelerate_config(tmp_path / "x.yaml", num_processes=2, fsdp=True)


def test_save_checkpoints_false_writes_none_and_importing_neurorit_keeps_jax_off_the_gpu(tiny_llama_dir, tmp_path):
    run = tmp_path / "bench"
    report = run_training(fresh(tiny_llama_dir), demo_examples(),
                          small(model=str(tiny_llama_dir), max_steps=2, checkpoint_every=1, save_checkpoints=False,
                                eval_before=False, eval_after=False, bake=False), run)
    assert report.status == "done" and report.steps == 2
    assert ckpt.latest_checkpoint(run) is None and not [m for m in read_metrics(run) if m["event"] == "checkpoint"]
    with pytest.raises(ConfigError, match="save_checkpoints"):
        small(save_checkpoints="no")
    env = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    out = subprocess.run([sys.executable, "-c", "import neurorit, os; print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'])"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "false"
