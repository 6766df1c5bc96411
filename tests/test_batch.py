"""`diffedit batch` (issue 22): manifests read into jobs with per-row errors, the plan, the local engine's outputs
and results, resume after a crash (a real subprocess killed with SIGKILL), and the Ray engine against the local one.

The model runs are the embedded ShapeWorld model at 4 steps, one candidate, 2 mask noises (about 0.1 s an edit)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffedit import DiffEditor, EditOptions
from diffedit.batch import plan_batch, read_jobs, run_batch
from diffedit.batch.plan import job_state
from diffedit.bench.batch import resume_ok, run_resume, write_shapeworld_manifest

FAST = EditOptions(num_inference_steps=4, extra_strengths=(), caption_candidate=False, mask_noises=2)
CLI_FAST = ["--steps", "4", "--one-candidate", "--set", "mask_noises=2", "--quiet"]


def _images(folder: Path, n: int = 3, size: int = 32) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _results(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def _cli(*args: str):
    from typer.testing import CliRunner

    from diffedit.cli import app

    return CliRunner().invoke(app, list(args))


# ---------------------------------------------------------------- manifests and plans (no model)
def test_jsonl_rows_become_jobs_and_bad_rows_say_why(tmp_path):
    _images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    manifest = _write_jsonl(tmp_path / "m.jsonl", [
        {"image": "im0.png", "source": "a cat", "target": ["a dog", "a red bowl"]},  # two jobs, one entry
        {"image": "im1.png", "source": "a cat", "target": "a dog", "seed": 7, "strength": 0.6, "id": "mine"},
        {"image": "missing.png", "source": "a cat", "target": "a dog"},
        {"image": "im1.png", "source": "a cat", "target": "A  CAT"},
        {"image": "im1.png", "source": "a cat", "target": "a dog", "options": {"strength": 3}},
        {"image": "im1.png", "source": "a cat", "target": "a dog", "colour": "red"},
        {"image": "im1.png", "source": "a cat", "target": "a dog", "seed": -1},
        {"image": "im1.png", "source": "a cat", "target": "a dog", "id": "../escape"},
        "{not json",
        {"image": "broken.png", "source": "a cat", "target": "a dog"},  # read only when it runs
    ])
    jobs, bad = read_jobs(manifest, options=FAST)
    assert [(j.row, j.target) for j in jobs] == [(1, "a dog"), (1, "a red bowl"), (2, "a dog"), (10, "a dog")]
    assert jobs[2].id == "mine" and jobs[2].seed == 7 and jobs[2].options.strength == 0.6 and jobs[0].seed == 0
    assert jobs[0].options.num_inference_steps == 4 and jobs[0].id.startswith("im0-") and jobs[0].id != jobs[1].id
    reasons = {b.row: b.reason for b in bad}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 9]
    assert "image not found" in reasons[3] and "nothing to edit" in reasons[4] and "strength must be <= 1" in reasons[5]
    assert "colour" in reasons[6] and "seed" in reasons[7] and "id must be a plain file name" in reasons[8]
    assert "not a JSON object" in reasons[9]


def test_csv_and_folder_manifests(tmp_path):
    _images(tmp_path, 2)
    (tmp_path / "m.csv").write_text("image,source,target,seed,strength\nim0.png,a cat,a dog,3,0.7\nim1.png,,a dog,,\n")
    jobs, bad = read_jobs(tmp_path / "m.csv", options=FAST, seed=11)
    got = [(j.row, j.seed, j.options.strength, j.source) for j in jobs]
    assert not bad and got == [(2, 3, 0.7, "a cat"), (3, 11, FAST.strength, "")]
    (tmp_path / "bad.csv").write_text("picture,source,target\nim0.png,a,b\n")
    with pytest.raises(ValueError, match="CSV columns must include image"):
        read_jobs(tmp_path / "bad.csv")
    jobs, bad = read_jobs(tmp_path, source="a cat", targets=["a dog", "a bowl"])
    assert not bad and [(Path(j.image).name, j.target) for j in jobs] == [
        ("im0.png", "a dog"), ("im0.png", "a bowl"), ("im1.png", "a dog"), ("im1.png", "a bowl")]
    with pytest.raises(ValueError, match="give --source and --target"):
        read_jobs(tmp_path)
    with pytest.raises(ValueError, match="is the folder of input images"):
        run_batch(tmp_path, tmp_path, source="a cat", targets=["a dog"])


def test_job_keys_follow_what_decides_the_output(tmp_path):
    _images(tmp_path, 1)
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"image": "im0.png", "source": "a cat", "target": "a dog"}])
    key = read_jobs(manifest, options=FAST)[0][0].key
    assert read_jobs(manifest, options=FAST)[0][0].key == key  # stable
    assert read_jobs(manifest, options=FAST.replace(strength=0.5))[0][0].key != key
    assert read_jobs(manifest, options=FAST, seed=1)[0][0].key != key
    assert read_jobs(manifest, options=FAST, model="other")[0][0].key != key


def test_plan_groups_shares_entries_skips_duplicates_and_refuses_clashing_ids(tmp_path):
    _images(tmp_path)
    manifest = _write_jsonl(tmp_path / "m.jsonl", [
        {"image": "im0.png", "source": "a cat", "target": ["a dog", "a bowl", "a red cat"]},
        {"image": "im1.png", "source": "a cat", "target": "a dog"},
        {"image": "im2.png", "source": "a cat", "target": "a dog", "strength": 0.5},  # other options: another group
        {"image": "im1.png", "source": "a cat", "target": "a dog"},  # the same job again
        {"image": "im2.png", "source": "a cat", "target": "a dog", "id": "x"},
        {"image": "im1.png", "source": "a cat", "target": "a bowl", "id": "x"},  # another edit, same id
    ])
    plan = plan_batch(*read_jobs(manifest, options=FAST), tmp_path / "out", batch_size=4)
    shapes = [[(Path(e["image"]).name, len(e["jobs"])) for e in g["entries"]] for g in plan.groups]
    assert shapes == [[("im0.png", 3), ("im1.png", 1)], [("im2.png", 1)], [("im2.png", 1)]]
    assert [row for _, row in plan.duplicates] == [2] and [b.row for b in plan.bad] == [6] and plan.todo == 6
    # a sidecar of another edit under a job's id is never overwritten
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.json").write_text(json.dumps({"batch": {"key": "something else"}}))
    plan = plan_batch(*read_jobs(manifest, options=FAST), tmp_path / "out", batch_size=4)
    assert {b.row for b in plan.bad} == {5, 6} and "holds another edit" in next(b.reason for b in plan.bad if b.row == 5)


# ---------------------------------------------------------------- the local engine
@pytest.fixture(scope="module")
def shapeworld(tmp_path_factory):
    """Six ShapeWorld jobs (three scenes, two edits each), the local engine's outputs, and its summary."""
    folder = tmp_path_factory.mktemp("batch")
    manifest = write_shapeworld_manifest(folder / "inputs", 6, seed=3, targets_per_image=2)
    summary = run_batch(manifest, folder / "local", options=FAST, batch_size=4, progress=False)
    return manifest, folder, summary


def test_local_engine_writes_each_edit_with_its_sidecar_and_a_results_line(shapeworld):
    manifest, folder, summary = shapeworld
    out = folder / "local"
    assert summary["done"] == 6 and summary["failed"] == summary["skipped"] == 0
    rows = _results(out)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"} and len({r["id"] for r in rows}) == 6
    assert not list(out.glob(".*.part"))
    first = json.loads((out / "case0000_1.json").read_text())
    assert first["seed"] == 3 and first["options"]["num_inference_steps"] == 4 and first["jobs"][0]["target"] == rows[0]["target"]
    # the two edits of a scene share one call (one mask pass, one inversion); a group of 4 jobs holds 2 scenes
    assert first["batch"]["jobs_in_call"] == 4 and first["batch"]["images_in_call"] == 2


def test_local_engine_outputs_are_the_editors_own(shapeworld):
    """Job k of a call is written from the call's k-th result: compare with the editor called directly."""
    manifest, folder, _ = shapeworld
    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:2]
    editor = DiffEditor.from_pretrained(progress=False)
    result = editor.edit([str(manifest.parent / r["image"]) for r in rows], [r["source"] for r in rows],
                         [r["target"] for r in rows], seed=[r["seed"] for r in rows], options=FAST)
    names = ["case0000_1", "case0000_2", "case0001_1", "case0001_2"]
    for name, image in zip(names, result.images):
        assert np.array_equal(np.asarray(Image.open(folder / "local" / f"{name}.png")), np.asarray(image))


def test_rerun_skips_everything_and_a_half_finished_group_redoes_only_its_missing_job(shapeworld, tmp_path):
    manifest, folder, _ = shapeworld
    out = tmp_path / "out"
    run_batch(manifest, out, options=FAST, batch_size=4, progress=False)
    again = run_batch(manifest, out, options=FAST, batch_size=4, progress=False)
    assert again["done"] == 0 and again["skipped"] == 6 and {r["reason"] for r in _results(out)} == {"done already"}
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("case*")}
    pixels = (out / "case0001_1.png").read_bytes()
    (out / "case0001_1.json").unlink()  # as if killed between the image's rename and the sidecar's
    resumed = run_batch(manifest, out, options=FAST, batch_size=4, progress=False)
    assert resumed["done"] == 1 and resumed["skipped"] == 5
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("case*")}
    changed = sorted(n for n in before if before[n] != after.get(n))
    assert changed == ["case0001_1.json", "case0001_1.png"] and (out / "case0001_1.json").is_file()
    assert (out / "case0001_1.png").read_bytes() == pixels  # the group ran whole: the same bytes


def test_cli_batch_reports_bad_rows_and_exit_codes(tmp_path):
    _images(tmp_path, 1)
    manifest = _write_jsonl(tmp_path / "m.jsonl", [
        {"image": "im0.png", "source": "a red square", "target": "a blue square"},
        {"image": "gone.png", "source": "a red square", "target": "a blue square"},
    ])
    done = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "out"), *CLI_FAST)
    assert done.exit_code == 5, done.output
    assert "1 done, 0 skipped, 1 failed of 2 jobs" in done.output
    statuses = sorted((r["row"], r["status"]) for r in _results(tmp_path / "out"))
    assert statuses == [(1, "done"), (2, "failed")]
    missing = _cli("batch", str(tmp_path / "nope.jsonl"), "--output-dir", str(tmp_path / "out2"))
    assert missing.exit_code == 2 and "manifest not found" in missing.output and not (tmp_path / "out2").exists()
    option = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "out3"), "--set", "strength=2")
    assert option.exit_code == 2 and "strength" in option.output


def test_cli_batch_chooses_the_inpainter_and_its_sidecars_name_it(tmp_path):
    manifest = write_shapeworld_manifest(tmp_path / "inputs", 1, seed=3)
    fast = ["--steps", "4", "--set", "mask_noises=2", "--quiet"]  # the default candidates: the inpainter's first

    def run(folder: str, *args: str) -> dict:
        done = _cli("batch", str(manifest), "--output-dir", str(tmp_path / folder), *fast, *args)
        assert done.exit_code == 0, done.output
        return json.loads(next((tmp_path / folder).glob("case*.json")).read_text())

    auto, none, same = run("auto"), run("none", "--inpaint-model", "none"), run("same", "--inpaint-model", "same")
    assert auto["inpainter"] == "embedded" and auto["candidates"][0] == "r=1 inpaint"
    assert none["inpainter"] is None and not any("inpaint" in c for c in none["candidates"])
    assert same["inpainter"] is None and "r=1 noise 1" in same["candidates"]  # the model itself from fresh noise
    # a job done with another inpainter is not done: its id holds another edit, so the row is refused, not skipped
    again = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "auto"), *fast, "--inpaint-model", "none")
    assert again.exit_code == 5 and "holds another edit" in _results(tmp_path / "auto")[-1]["reason"]
    missing = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "gone"), *fast,
                   "--inpaint-model", str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "not found" in missing.output


def test_cli_batch_edits_with_the_embedded_flow_model(tmp_path):
    """--model shapeworld-flow (and any SD3 / FLUX folder): the jobs go through FlowEdit, as `diffedit edit` sends them,
    and the sidecars say so; an inpainting model is refused before anything runs."""
    manifest = write_shapeworld_manifest(tmp_path / "inputs", 2, seed=4)
    done = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "out"), *CLI_FAST, "--model", "shapeworld-flow")
    assert done.exit_code == 0, done.output
    assert "2 done, 0 skipped, 0 failed of 2 jobs" in done.output
    sidecars = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("case*.json"))]
    assert len(sidecars) == 2
    assert all(s["decoder"] == "flowedit" and s["family"] == "unet" and s["candidates"] == ["flowedit"] for s in sidecars)
    assert all(s["model"].endswith("flow_weights") and s["inpainter"] is None for s in sidecars)
    for s in sidecars:  # edited inside the mask, the input outside it
        edited, source = (np.asarray(Image.open(p)) for p in (s["outputs"][0], manifest.parent / s["input"]))
        assert edited.shape == source.shape and (edited != source).any() and (edited == source).all(-1).mean() > 0.5
    refused = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "out2"), *CLI_FAST, "--model",
                   "shapeworld-flow", "--inpaint-model", "same")
    assert refused.exit_code == 2 and "takes no --inpaint-model" in refused.output and not (tmp_path / "out2").exists()
    # the other decoder is another edit: into the same folder, its jobs are refused (their ids hold FlowEdit's edits)
    inverted = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "out3"), *CLI_FAST, "--model",
                    "shapeworld-flow", "--flow-decoder", "inverted")
    assert inverted.exit_code == 0, inverted.output
    assert json.loads(next((tmp_path / "out3").glob("case*.json")).read_text())["decoder"] == "inverted"
    again = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "out"), *CLI_FAST, "--model", "shapeworld-flow",
                 "--flow-decoder", "inverted")
    assert again.exit_code == 5 and "holds another edit" in _results(tmp_path / "out")[-1]["reason"]
    for bad, says in (("ddim", "unknown --flow-decoder"), ("flowedit", "flow models only")):
        model = ["--model", "shapeworld-flow"] if bad == "ddim" else []
        res = _cli("batch", str(manifest), "--output-dir", str(tmp_path / "out4"), *CLI_FAST, *model, "--flow-decoder", bad)
        assert res.exit_code == 2 and says in res.output and not (tmp_path / "out4").exists()


# ---------------------------------------------------------------- crashes and the Ray engine
@pytest.mark.slow
def test_killed_batch_resumes_with_every_job_once_and_no_partial_file(tmp_path):
    """A real `diffedit batch` process SIGKILLed at a random point, then run again (diffedit bench resume)."""
    report = run_resume(tmp_path, jobs=16, seed=5, kill_seed=int.from_bytes(os.urandom(4), "little"), steps=4,
                        batch_size=4, one_candidate=True, targets_per_image=2)
    assert resume_ok(report), report
    assert report["results_lines"] == 16 and report["partial"] == [] and report["redone_after_commit"] == []


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    from diffedit.batch.ray_engine import local_instance

    ray.init(**local_instance(workers=2, cpus_per_worker=1), include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def test_no_room_says_when_no_node_can_hold_a_worker():
    from diffedit.batch.ray_engine import no_room

    cpu_node, gpu_node = {"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}}
    assert no_room([cpu_node], 0.0, 1.0) is None and no_room([cpu_node, gpu_node], 2.0, 1.0) is None
    assert no_room([cpu_node, {**gpu_node, "Alive": False}], 1.0, 1.0).endswith(
        "the largest has 0 GPU and 8 CPU: lower --gpus-per-worker, or add a node that has them")
    assert "2 CPU" in no_room([gpu_node], 3.0, 2.0) and no_room([gpu_node], 0.0, 16.0) is not None
    assert no_room([], 0.0, 1.0) is not None


def test_ray_engine_joins_a_cluster_running_on_this_machine_as_it_is():
    """With no --address, Ray joins a cluster `ray start` left running (or RAY_ADDRESS), which refuses instance
    settings; the run then joins it without them (it failed on Ray's message before). Ray's init is stood in for."""
    from diffedit.batch.ray_engine import _init

    class FakeRay:
        def __init__(self, running: bool):
            self.running, self.calls = running, []

        def init(self, **kwargs):
            self.calls.append(kwargs)
            if self.running and ("num_cpus" in kwargs or "_system_config" in kwargs):
                raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")

    alone, running, given = FakeRay(False), FakeRay(True), FakeRay(True)
    _init(alone, None, workers=2, cpus_per_worker=1)
    _init(running, None, workers=2, cpus_per_worker=1)
    _init(given, "ray://head:10001", workers=2, cpus_per_worker=1)
    assert len(alone.calls) == 1 and alone.calls[0]["_system_config"] == {"worker_niceness": 0}
    assert len(running.calls) == 2 and "num_cpus" not in running.calls[1] and "address" not in running.calls[1]
    assert given.calls == [{"address": "ray://head:10001", "include_dashboard": False, "log_to_driver": False,
                            "logging_level": "ERROR"}]
    other = FakeRay(False)
    other.init = lambda **kwargs: (_ for _ in ()).throw(ValueError("some other problem"))
    with pytest.raises(ValueError, match="some other problem"):
        _init(other, None, workers=1, cpus_per_worker=1)


@pytest.mark.slow
def test_ray_engine_refuses_gpus_no_node_has_instead_of_waiting(shapeworld, local_ray, tmp_path):
    manifest, _, _ = shapeworld
    with pytest.raises(ValueError, match=r"no node of the Ray cluster can hold a worker \(1 GPU"):
        run_batch(manifest, tmp_path / "out", options=FAST, engine="ray", cluster={"workers": 1, "gpus_per_worker": 1},
                  progress=False)


@pytest.mark.slow
def test_ray_engine_stops_when_a_worker_keeps_dying(shapeworld, local_ray, tmp_path):
    """A worker that dies on its jobs every time (killed for memory, say) is restarted a bounded number of times, then
    the run stops with one line; Ray Data's default restarts it forever and the run never ends."""
    manifest, _, _ = shapeworld
    with pytest.raises(ValueError, match="a Ray worker died more than 1 times .* the same command resumes the rest"):
        run_batch(manifest, tmp_path / "out", options=FAST, engine="ray", cluster={"workers": 1, "restarts": 1},
                  editor_kwargs={"crash_after": 0}, progress=False)  # SIGKILLed as each group starts
    assert not list((tmp_path / "out").glob("case*"))


@pytest.mark.slow
def test_ray_engine_writes_the_local_engines_bytes_and_redoes_a_killed_workers_jobs(shapeworld, local_ray, tmp_path):
    manifest, folder, _ = shapeworld
    out = tmp_path / "ray"
    def niceness() -> int:  # nested, so Ray ships it by value
        return os.nice(0)

    # workers at the command's priority, not Ray's nice 15 (which starved them on a busy machine)
    assert local_ray.get(local_ray.remote(niceness).remote()) == niceness()
    summary = run_batch(manifest, out, options=FAST, batch_size=4, engine="ray", cluster={"workers": 2}, progress=False,
                        editor_kwargs={"crash_after": 1, "crash_marker": str(tmp_path / "crashed")})
    assert (tmp_path / "crashed").exists()  # a worker was SIGKILLed after writing its first job
    assert summary["done"] == 6 and summary["failed"] == 0
    rows = _results(out)
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6 and {r["status"] for r in rows} == {"done"}
    local = sorted(p.name for p in (folder / "local").glob("case*.png"))
    assert sorted(p.name for p in out.glob("case*.png")) == local
    for name in local:
        assert (out / name).read_bytes() == (folder / "local" / name).read_bytes()
    assert not list(out.glob(".*.part"))
    assert all(job_state(out, r["id"], json.loads((out / f"{r['id']}.json").read_text())["batch"]["key"]) == "done"
               for r in rows)
