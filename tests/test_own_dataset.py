"""Your own COCO-format dataset with no Python (issue 19, "Why" 1, 2, 3, 5, 6, 7): a json named by path or
in DATASETS.REGISTER, its subsets by name (also what tools/make_subsets.py wrote), NUM_CLASSES checked
against the data or taken from it, checkpoints that keep their categories (evaluation maps labels back
by name), --eval-only refused without weights, --dry-run checking MODEL.WEIGHTS, user errors in one
line, and a local-cluster sweep on the dataset that ends done, with a subset trained by name and a
failed run whose own message reaches its log.txt and status.py."""
import importlib.util
import json
import os
import re
import shutil

import pytest
import torch
import yaml

from rethink.config import load_config
from rethink.data.catalog import get_dataset_spec, register_config_datasets, unregister
from rethink.data.categories import label_to_category_id
from rethink.data.coco import load_coco_index
from rethink.data.errors import DatasetError, DatasetNotFoundError
from rethink.data.synthetic import make_synthetic_coco
from rethink.engine import Checkpointer, check_run, evaluate, read_metrics
from rethink.modeling import build_model
from rethink.utils.logger import setup_logging
from rethink.utils.usererrors import TRACEBACK_ENV, run_cli

from .conftest import CONFIGS, ROOT

pytestmark = pytest.mark.usefixtures("isolated_cache")

TINY = str(CONFIGS / "demo" / "scratch_gn_r18_tiny.yaml")
PRETRAINED = str(CONFIGS / "demo" / "pretrained_gn_r18_tiny.yaml")
SHORT = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.REFERENCE_IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4",
         "SOLVER.STEPS", "(3,)", "SOLVER.WARMUP_ITERS", "1", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "0",
         "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96", "TEST.DETECTIONS_PER_IMAGE", "20"]


def load_tool(path):
    """tools/*.py or launch/*.py as a module, run in this process (a subprocess spends seconds importing torch)."""
    spec = importlib.util.spec_from_file_location("tool_" + path.replace("/", "_")[:-3], ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(capsys, path, *args, entry="main"):
    """rc, stdout, stderr of a tool's entry point through the shared user-error handling."""
    module = load_tool(path)
    capsys.readouterr()
    setup_logging()  # the console handler on this test's stderr (an earlier test's is closed)
    rc = run_cli(getattr(module, entry), list(args))
    out = capsys.readouterr()
    err = out.err
    if "\nerror: " in "\n" + err:  # a user error: its message alone, after the tool's log lines; no traceback
        assert "Traceback" not in err, err
        err = err[err.index("error: "):]
    return rc, out.out, err


@pytest.fixture(scope="module")
def mine(tmp_path_factory):
    """The user's dataset, in the COCO layout: annotations/instances_{train,val}.json, train/, val/ (3 categories)."""
    root = tmp_path_factory.mktemp("mine")
    paths = make_synthetic_coco(str(root), num_images=16, num_val=4)
    return {"root": str(root), **paths}


def test_a_json_path_is_a_dataset_with_its_images_found_beside_it(mine, tmp_path):
    spec = get_dataset_spec(mine["train"])
    assert (spec.json_file, spec.image_root, spec.kind) == (mine["train"], mine["image_root_train"], "path")
    # a flat folder: the images beside the json
    flat = tmp_path / "flat"
    shutil.copytree(mine["image_root_val"], flat)
    shutil.copy(mine["val"], flat / "labels.json")
    assert get_dataset_spec(str(flat / "labels.json")).image_root == str(flat)
    # images nowhere: the folders tried, and how to name the right one
    lost = tmp_path / "lost"
    lost.mkdir()
    shutil.copy(mine["val"], lost / "labels.json")
    with pytest.raises(DatasetNotFoundError) as e:
        get_dataset_spec(str(lost / "labels.json"))
    text = str(e.value)
    assert f"{lost / 'labels.json'}): its image folder was not given" in text
    assert str(lost / "images") in text and "DATASETS.REGISTER" in text
    with pytest.raises(DatasetNotFoundError, match=r"annotation file .*nowhere\.json not found"):
        get_dataset_spec(str(tmp_path / "nowhere.json"))


def test_register_key_names_a_dataset_and_its_subsets(mine):
    cfg = load_config(TINY, ["DATASETS.REGISTER", repr((("mine_reg", mine["train"]),)),
                             "DATASETS.TRAIN", "('mine_reg_1of2_s0',)"])
    try:
        assert register_config_datasets(cfg) == ["mine_reg"]
        spec = get_dataset_spec("mine_reg")
        assert (spec.json_file, spec.image_root, spec.kind) == (mine["train"], mine["image_root_train"], "registered")
        sub = get_dataset_spec("mine_reg_1of2_s0")
        with open(sub.json_file) as f:
            assert len(json.load(f)["images"]) == 8  # half of the 16 images with an instance (all have one but 1)
        assert sub.image_root == mine["image_root_train"] and sub.kind == "subset"
        assert len(json.load(open(get_dataset_spec("mine_reg_5_s0").json_file))["images"]) == 5
    finally:
        unregister("mine_reg")
    with pytest.raises(Exception, match=r"DATASETS.REGISTER = \(\('x',\),\): entry 0"):
        load_config(TINY, ["DATASETS.REGISTER", "(('x',),)"])


def test_subsets_written_by_make_subsets_are_found_by_name(mine, tmp_path, capsys):
    """Why 2: `make_subsets.py --json ... --name mydata` then DATASETS.TRAIN mydata_1of2_s0."""
    with pytest.raises(DatasetNotFoundError, match=r"unknown dataset 'mydata_1of2_s0'.*DATASETS.REGISTER"):
        get_dataset_spec("mydata_1of2_s0")
    rc, out, err = run_tool(capsys, "tools/make_subsets.py", "--json", mine["train"], "--name", "mydata",
                            "--subsets", "1of2", "1k")
    assert rc == 2 and "subset 1k: needs 1000 images but the source has 15 eligible images" in err, err
    assert "Traceback" not in err
    rc, out, err = run_tool(capsys, "tools/make_subsets.py", "--json", mine["train"], "--name", "mydata",
                            "--subsets", "1of2")
    assert rc == 0, err
    spec = get_dataset_spec("mydata_1of2_s0")  # not registered: found by its name in the cache
    assert spec.kind == "subset" and spec.image_root == mine["image_root_train"] and spec.parent == mine["train"]
    # --output-dir: the written json is a dataset by path; its manifest names the image folder
    rc, out, err = run_tool(capsys, "tools/make_subsets.py", "--json", mine["train"], "--name", "mydata",
                            "--subsets", "1of2", "--output-dir", str(tmp_path / "subs"))
    assert rc == 0, err
    assert get_dataset_spec(str(tmp_path / "subs" / "mydata_1of2_s0.json")).image_root == mine["image_root_train"]


def test_num_classes_is_checked_against_the_training_and_test_jsons(mine):
    """Why 3: the key, its value, the json and its category count, at start-up."""
    for value, role, json_file in ((2, "DATASETS.TRAIN", mine["train"]), (4, "DATASETS.TRAIN", mine["train"])):
        cfg = load_config(TINY, ["DATASETS.TRAIN", repr((mine["train"],)), "DATASETS.TEST", repr((mine["val"],)),
                                 "MODEL.ROI_HEADS.NUM_CLASSES", str(value)])
        with pytest.raises(DatasetError) as e:
            check_run(cfg)
        assert str(e.value).startswith(f"MODEL.ROI_HEADS.NUM_CLASSES = {value}, but {json_file} (dataset "
                                       f"{json_file}, in {role}) has 3 categories (rectangle, ellipse, triangle)")
    # a test set with 2 categories against a model of 3 (eval-only reads no training set)
    two = os.path.join(mine["image_root_val"], "instances_val2cat.json")  # beside its images
    data = json.load(open(mine["val"]))
    data["categories"] = [c for c in data["categories"] if c["id"] != 7]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 7]
    json.dump(data, open(two, "w"))
    cfg = load_config(TINY, ["DATASETS.TEST", repr((two,)), "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    with pytest.raises(DatasetError, match=r"NUM_CLASSES = 3, but .*instances_val2cat.json \(dataset .*, in "
                                           r"DATASETS.TEST\) has 2 categories"):
        check_run(cfg, eval_only=True)
    check_run(load_config(TINY, ["DATASETS.TEST", repr((two,)), "MODEL.ROI_HEADS.NUM_CLASSES", "0"]), eval_only=True)


def test_labels_map_to_a_test_json_by_name_then_by_id():
    trained = [{"id": 1, "name": "rectangle"}, {"id": 3, "name": "ellipse"}, {"id": 7, "name": "triangle"}]
    renumbered = [{"id": 30, "name": "triangle"}, {"id": 10, "name": "ellipse"}, {"id": 20, "name": "rectangle"}]
    assert label_to_category_id(trained, renumbered, "t.json") == {1: 20, 2: 10, 3: 30}
    assert label_to_category_id(None, renumbered, "t.json") == {1: 10, 2: 20, 3: 30}  # detectron2's: sorted ids
    renamed = [{"id": 7, "name": "tri"}, {"id": 1, "name": "rect"}, {"id": 3, "name": "ell"}]
    assert label_to_category_id(trained, renamed, "t.json") == {1: 1, 2: 3, 3: 7}
    with pytest.raises(DatasetError, match=r"t.json: the model was trained on 3 categories .*2 of them are in this "
                                           r"json neither by name nor by id: 3 'ellipse', 7 'triangle'"):
        label_to_category_id(trained, [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "x"},
                                       {"id": 4, "name": "y"}], "t.json")


@pytest.fixture(scope="module")
def trained(mine, tmp_path_factory):
    """tools/train.py on the dataset by path, NUM_CLASSES from the data: the run dir."""
    out = str(tmp_path_factory.mktemp("runs") / "by_path")
    module = load_tool("tools/train.py")
    rc = run_cli(module.cli, ["--config", TINY, *SHORT, "MODEL.ROI_HEADS.NUM_CLASSES", "0",
                              "DATASETS.TRAIN", repr((mine["train"],)), "DATASETS.TEST", repr((mine["val"],)),
                              "OUTPUT_DIR", out])
    assert rc == 0
    return out


def test_train_on_a_json_path_with_num_classes_from_the_data(trained):
    """Why 1 and 3: trained by path to the end; 3 classes from the json; the checkpoint keeps the categories."""
    assert load_config(os.path.join(trained, "config.yaml")).MODEL.ROI_HEADS.NUM_CLASSES == 0  # as written
    ckpt = torch.load(os.path.join(trained, "model_final.pth"), weights_only=True)
    assert ckpt["categories"] == [{"id": 1, "name": "rectangle"}, {"id": 3, "name": "ellipse"},
                                  {"id": 7, "name": "triangle"}]
    assert ckpt["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4  # 3 classes + background
    m = read_metrics(os.path.join(trained, "metrics.jsonl"))
    assert m[-1]["iteration"] == 4 and "segm/AP" in m[-1]
    assert "3 classes, from" in open(os.path.join(trained, "log.txt")).read()


class GroundTruthModel(torch.nn.Module):
    """Predicts each test image's ground truth (in the loader's order), labelled as a model trained on
    `trained` would label it (label i = trained[i - 1])."""

    def __init__(self, json_file, trained):
        super().__init__()
        self.index = load_coco_index(json_file)
        self.label = {c["name"]: i + 1 for i, c in enumerate(trained)}
        self.names = {c["id"]: c["name"] for c in self.index.categories}
        self.row = 0

    def forward(self, images, output_sizes=None):
        outputs = []
        for _ in images:
            a = self.index.annotations(self.row, with_segmentation=False)
            self.row += 1
            keep = a["iscrowd"] == 0
            boxes = torch.as_tensor(a["bbox"][keep], dtype=torch.float32)
            boxes[:, 2:] += boxes[:, :2]
            labels = torch.tensor([self.label[self.names[int(c)]] for c in a["category_id"][keep]], dtype=torch.int64)
            outputs.append({"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": labels})
        return outputs


def test_evaluation_maps_labels_by_the_trained_categories(mine, trained, tmp_path):
    """A test json that numbers and orders the categories differently is evaluated right with the category
    list the checkpoint keeps; without it (the test json's sorted ids) the labels would name other classes."""
    data = json.load(open(mine["val"]))
    new_id = {1: 20, 3: 10, 7: 30}  # rectangle 20, ellipse 10, triangle 30: sorted ids give other classes
    data["categories"] = [{**c, "id": new_id[c["id"]]} for c in reversed(data["categories"])]
    for a in data["annotations"]:
        a["category_id"] = new_id[a["category_id"]]
    renumbered = os.path.join(mine["image_root_val"], "renumbered.json")  # beside its images
    json.dump(data, open(renumbered, "w"))
    model = build_model(load_config(TINY, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"]))
    checkpointer = Checkpointer(model, os.path.join(trained, "eval"))
    checkpointer.resume_or_load(os.path.join(trained, "model_final.pth"), resume=False)
    categories = checkpointer.loaded_categories
    assert [c["name"] for c in categories] == ["rectangle", "ellipse", "triangle"]
    cfg = load_config(TINY, [*SHORT, "MODEL.MASK_ON", "False", "DATASETS.TEST", repr((renumbered,)),
                             "OUTPUT_DIR", str(tmp_path)])  # evaluation writes its results file there
    mapped = evaluate(cfg, GroundTruthModel(renumbered, categories), torch.device("cpu"), categories=categories)
    assert mapped[renumbered]["bbox"]["AP"] == pytest.approx(100.0)
    unmapped = evaluate(cfg, GroundTruthModel(renumbered, categories), torch.device("cpu"))
    assert unmapped[renumbered]["bbox"]["AP"] < 50


def test_eval_only_without_weights_is_refused_unless_asked(mine, tmp_path, capsys):
    """Why 5: no MODEL.WEIGHTS is one message and exit status 2; --allow-random-weights evaluates anyway."""
    common = ["--config", TINY, "--eval-only", *SHORT, "DATASETS.TEST", repr((mine["val"],)),
              "OUTPUT_DIR", str(tmp_path / "ev")]
    rc, out, err = run_tool(capsys, "tools/train.py", *common, entry="cli")
    assert rc == 2 and err.startswith("error: --eval-only with MODEL.WEIGHTS empty: that would evaluate a randomly "
                                      "initialised model"), err
    assert "--allow-random-weights" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "ev" / "eval_results.json")
    rc, out, err = run_tool(capsys, "tools/train.py", "--allow-random-weights", *common, entry="cli")
    assert rc == 0 and os.path.isfile(tmp_path / "ev" / "eval_results.json"), err
    rc, out, err = run_tool(capsys, "tools/train.py", *common, "MODEL.WEIGHTS", str(tmp_path / "no.pth"), entry="cli")
    assert rc == 2 and f"no such file {tmp_path / 'no.pth'}" in err.splitlines()[0], err


def test_user_errors_are_one_line_and_the_traceback_is_behind_a_variable(mine, tmp_path, capsys, monkeypatch):
    """Why 7: a config, dataset or weights mistake prints its message alone and exits 2."""
    cases = [(["SOLVER.BASE_RL", "0.1"], "error: command line: unknown config key SOLVER.BASE_RL (did you mean "
                                         "SOLVER.BASE_LR?)"),
             (["DATASETS.TRAIN", "('mydata',)"], "error: unknown dataset 'mydata'."),
             (["MODEL.ROI_HEADS.NUM_CLASSES", "2", "DATASETS.TRAIN", repr((mine["train"],))],
              f"error: MODEL.ROI_HEADS.NUM_CLASSES = 2, but {mine['train']}")]
    for overrides, message in cases:
        rc, out, err = run_tool(capsys, "tools/train.py", "--config", TINY, "OUTPUT_DIR", str(tmp_path / "x"),
                                *overrides, entry="cli")
        assert rc == 2 and err.startswith(message), err
        assert "Traceback" not in err and err.count("\n") <= 4, err
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(DatasetError, match="unknown dataset 'mydata'"):
        run_tool(capsys, "tools/train.py", "--config", TINY, "DATASETS.TRAIN", "('mydata',)", entry="cli")


def test_dry_run_checks_every_runs_weights(tmp_path, capsys, monkeypatch):
    """Why 6: a pretrained run whose MODEL.WEIGHTS is not on disk is refused before anything is queued."""
    monkeypatch.setenv("RETHINK_WEIGHTS", str(tmp_path / "weights"))
    sweep = tmp_path / "w.yaml"
    sweep.write_text(yaml.safe_dump({"name": "w", "root": str(tmp_path),
                                     "config": "configs/demo/{init}_gn_r18_tiny.yaml",
                                     "axes": {"init": ["scratch", "pretrained"]},
                                     "overrides": ["MODEL.WEIGHTS", "catalog://ImageNetPretrained/FAIR/R-18-GN"]}))
    rc, out, err = run_tool(capsys, "launch/submit.py", "--sweep", str(sweep), "--dry-run")
    assert rc == 2 and "refusing to submit" in err, err
    assert (f"{sweep}: overrides MODEL.WEIGHTS (run(s) scratch, pretrained): MODEL.WEIGHTS "
            f"'catalog://ImageNetPretrained/FAIR/R-18-GN' resolves to {tmp_path}/weights/ImageNetPretrained/FAIR/"
            f"R-18-GN.pkl, which does not exist") in err
    os.makedirs(tmp_path / "weights" / "ImageNetPretrained" / "FAIR")
    open(tmp_path / "weights" / "ImageNetPretrained" / "FAIR" / "R-18-GN.pkl", "wb").close()
    rc, out, err = run_tool(capsys, "launch/submit.py", "--sweep", str(sweep), "--dry-run")
    assert rc == 0 and "2 runs in one job array" in out, err
    # the config's own MODEL.WEIGHTS (the demo's pre-trained backbone), named with its config
    sweep.write_text(yaml.safe_dump({"name": "w", "root": str(tmp_path), "config": PRETRAINED,
                                     "overrides": ["MODEL.WEIGHTS", str(tmp_path / "R-18-GN.pth")]}))
    rc, out, err = run_tool(capsys, "launch/submit.py", "--sweep", str(sweep), "--dry-run")
    assert rc == 2 and f"no such file {tmp_path / 'R-18-GN.pth'}" in err, err


def test_own_dataset_sweep_file_dry_run(mine, tmp_path, capsys, monkeypatch):
    """launch/sweeps/own_dataset.yaml (the README's example), its two paths pointed at the user's dataset."""
    spec = yaml.safe_load(open(ROOT / "launch" / "sweeps" / "own_dataset.yaml"))
    assert [d[0] for d in spec["datasets"]] == [spec["train_dataset"], "mine_val"]
    spec["datasets"] = [["mine", mine["train"]], ["mine_val", mine["val"], mine["image_root_val"]]]
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))  # axes in the file's order
    monkeypatch.setenv("RETHINK_WEIGHTS", str(tmp_path / "weights"))
    rc, out, err = run_tool(capsys, "launch/submit.py", "--sweep", str(tmp_path / "own.yaml"), "--dry-run",
                            "--root", str(tmp_path))
    assert rc == 2 and "pretrained_full_6x" in err and "R-50-GN.pkl, which does not exist" in err, err
    os.makedirs(tmp_path / "weights" / "ImageNetPretrained" / "FAIR")
    (tmp_path / "weights" / "ImageNetPretrained" / "FAIR" / "R-50-GN.pkl").write_bytes(b"")
    rc, out, err = run_tool(capsys, "launch/submit.py", "--sweep", str(tmp_path / "own.yaml"), "--dry-run",
                            "--root", str(tmp_path))
    assert rc == 0, err
    for init in ("scratch", "pretrained"):
        for subset in ("full", "1of10"):
            assert re.search(rf"\n{init}_{subset}_6x ", out) and re.search(rf"\n{init}_{subset}_2x \(branch of "
                                                                           rf"{init}_{subset}_6x", out), out
    assert "('mine_1of10_s0',)" in out and "MAX_ITER 45000 = 6x of 7500" in out and "8 runs in one job array" in out
    assert not (tmp_path / "own_dataset").exists()


@pytest.mark.slow
def test_local_sweep_on_a_dataset_named_by_path_ends_done(mine, tmp_path, capsys):
    """A local-cluster sweep on the dataset (by path, in the sweep's `datasets`): the full set and a subset by
    name end done; a run with the wrong NUM_CLASSES fails at its start with its own message in its log.txt
    and in status.py, whole; status.py also reports a single run directory of tools/train.py."""
    spec = {"name": "own", "root": str(tmp_path), "config": TINY, "train_dataset": "mine",
            "datasets": [["mine", os.path.relpath(mine["train"])]],
            "axes": {"subset": ["full", "1of2"], "MODEL.ROI_HEADS.NUM_CLASSES": [0, 2]},
            "exclude": [{"subset": "1of2", "MODEL.ROI_HEADS.NUM_CLASSES": 2}],
            "overrides": SHORT + ["DATASETS.TEST", repr((mine["val"],))],
            "resources": {"cpus_per_task": 1, "time": "00:20:00", "array_parallelism": 3}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))  # run names in the axes' order
    submit = load_tool("launch/submit.py")
    capsys.readouterr()
    rc = submit.main(["--sweep", str(tmp_path / "own.yaml"), "--cluster", "local", "--wait"])
    out = capsys.readouterr().out
    assert rc == 1, out  # one run failed
    sweep_dir = tmp_path / "own"
    assert yaml.safe_load(open(sweep_dir / "sweep.yaml"))["datasets"] == [["mine", mine["train"]]]  # absolute
    rc, out, err = run_tool(capsys, "launch/status.py", str(sweep_dir))
    assert rc == 0
    assert re.search(r"\nfull_numclasses0 +\d+ +done +4/4", out), out
    assert re.search(r"\n1of2_numclasses0 +\d+ +done +4/4", out), out
    message = (f"DatasetError: MODEL.ROI_HEADS.NUM_CLASSES = 2, but {mine['train']} (dataset mine, in DATASETS.TRAIN) "
               f"has 3 categories (rectangle, ellipse, triangle): the model would predict 2 classes for 3. Set "
               f"MODEL.ROI_HEADS.NUM_CLASSES 3, or 0 to take it from the training json")
    assert re.search(r"\nfull_numclasses2 +\d+ +failed +0/4", out) and f"\nfull_numclasses2: {message}" in out, out
    log = open(sweep_dir / "full_numclasses2" / "log.txt").read()
    assert f"failed: {message}" in log, log[-2000:]
    with open(sweep_dir / "1of2_numclasses0" / "config.yaml") as f:
        assert "mine_1of2_s0" in f.read()
    # a run directory written by tools/train.py
    rc, out, err = run_tool(capsys, "launch/status.py", str(sweep_dir / "full_numclasses0"))
    assert rc == 0 and re.search(r"\nfull_numclasses0 +done +4/4", out), out + err
    rc, out, err = run_tool(capsys, "launch/status.py", str(tmp_path / "nothing"))
    assert rc == 2 and err.startswith(f"error: {tmp_path / 'nothing'}: no sweep.yaml and no config.yaml"), err
