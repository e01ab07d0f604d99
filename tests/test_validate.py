"""Stage validate's checks beyond the typed config (pipeline.experiment.preflight): what a stage would refuse minutes or hours later
is refused here, before DVC removes any stage's outputs, with the parameter's dotted path in the message."""
from __future__ import annotations

import copy

import pytest
import torch
import yaml

from pipeline.core import config

from pipeline.experiment import preflight
from pipeline.heads import HEADS, margin_names

GIB = 2**30
CPU_ONLY = preflight.Machine(memory_bytes=24 * GIB, cuda_memory_bytes=())
ONE_GPU = preflight.Machine(memory_bytes=128 * GIB, cuda_memory_bytes=(80 * GIB,))
RAW = yaml.safe_load((config.PROJECT_ROOT / "params.yaml").read_text())


def check(raw: dict, profile: str = "smoke", machine: preflight.Machine = CPU_ONLY) -> None:
    preflight.check(config.resolve(raw, profile), machine)


def smoke(raw: dict) -> dict:
    return raw["profiles"]["smoke"]


def refused(change, match: str, machine: preflight.Machine = CPU_ONLY) -> str:
    raw = copy.deepcopy(RAW)
    change(raw)
    with pytest.raises(ValueError, match=match) as caught:
        check(raw, machine=machine)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("profile", sorted(RAW["profiles"]))
def test_every_profile_passes_every_check(profile):
    """On a machine with the CUDA device the paper profile names; the CPU profiles on this project's 24 GiB one."""
    check(RAW, profile, ONE_GPU if profile == "paper" else CPU_ONLY)


def test_the_paper_profile_is_refused_without_cuda():
    with pytest.raises(ValueError, match=r"train.device is 'cuda' but CUDA is not available on this machine"):
        check(RAW, "paper", CPU_ONLY)


# --- finding 1: keys and names no check read -------------------------------------------------------------------------


@pytest.mark.parametrize("where, path", [
    (("identites",), "data.synthetic.identites"),
    (("nuisance", "yaw_stdd"), "data.synthetic.nuisance.yaw_stdd"),
    (("protocols", "synth-lfw", "pairs_per_fld"), "data.synthetic.protocols.synth-lfw.pairs_per_fld"),
])
def test_an_unknown_synthetic_key_is_named_by_its_full_path(where, path):
    def change(raw):
        node = smoke(raw)["data"]["synthetic"]
        for key in where[:-1]:
            node = node.setdefault(key, {})
        node[where[-1]] = 5

    refused(change, rf"{path}: unknown parameter")


def test_a_bad_synthetic_value_is_refused_by_validate():
    refused(lambda raw: smoke(raw)["data"]["synthetic"].update(train_identities=10**9),
            r"data.synthetic: train_identities must be < 1000000")


@pytest.mark.parametrize("change, match", [
    (lambda raw: raw["backbone"].update(name="mobilefacenett"), r"backbone.name: unknown backbone 'mobilefacenett'"),
    (lambda raw: smoke(raw)["distill"].update(teacher_backbone="airfase"),
     r"distill.teacher_backbone: unknown backbone 'airfase'"),
    (lambda raw: raw["rows"]["cosface"].update(head="cosfase"), r"rows.cosface.head: unknown head 'cosfase'"),
    (lambda raw: raw["pretrain"].update(head="softmax"), r"pretrain.head: unknown head 'softmax'"),
    (lambda raw: raw["distill"].update(teacher_head="li_arc"), r"distill.teacher_head: unknown head 'li_arc'"),
])
def test_an_unknown_backbone_or_head_is_named_with_its_field(change, match):
    refused(change, match)


@pytest.mark.parametrize("row, margins, match", [
    ("arcface_m050_ns", {"m": 5}, r"rows.arcface_m050_ns.margins: head 'arcface': margin 'm' must lie in"),
    ("arcface_m050_ns", {"m": 50}, r"rows.arcface_m050_ns.margins: head 'arcface': margin 'm' must lie in"),
    ("li_arcface_m035", {"m": 5}, r"rows.li_arcface_m035.margins: head 'li_arcface': margin 'm' must lie in"),
    ("cosface", {"m": 50}, r"rows.cosface.margins: head 'cosface': margin 'm' must lie in"),
    ("cosface", {"mm": 0.35}, r"rows.cosface.margins: head 'cosface': unknown margin keyword 'mm'"),
])
def test_a_margin_a_head_refuses_is_named_with_its_row(row, margins, match):
    refused(lambda raw: raw["rows"][row].update(margins=margins), match)


@pytest.mark.parametrize("head", [name for name in HEADS.names() if "m" in margin_names(name)])
@pytest.mark.parametrize("m", [5, 50])
def test_every_registered_head_refuses_an_absurd_margin_at_validate(head, m):
    refused(lambda raw: raw["rows"]["cosface"].update(head=head, margins={"m": m}),
            rf"rows.cosface.margins: head '{head}': margin 'm' must lie in")


def test_the_teacher_margins_are_checked():
    refused(lambda raw: raw["distill"].update(teacher_margins={"m": 5}),
            r"distill.teacher_margins: head 'li_arcface': margin 'm' must lie in")


def test_a_margin_yaml_reads_as_text_says_how_to_write_it():
    message = refused(lambda raw: raw["rows"]["cosface"].update(margins={"m": "35e-2"}),
                      r"rows.cosface.margins: .*margin 'm' must be a finite number")
    assert "write 35.0e-2 (YAML 1.1 reads 35e-2 as text)" in message


def test_a_reserved_row_name_is_refused():
    refused(lambda raw: raw["rows"].update(teacher=dict(raw["rows"]["cosface"])), r"rows: 'teacher' is a reserved")


# --- finding 2: accepted by validate, failing or misleading later ----------------------------------------------------


@pytest.mark.parametrize("section", ["train", "align"])
def test_a_cuda_device_on_a_machine_without_cuda_says_what_to_write(section):
    def change(raw):
        smoke(raw)[section]["device"] = "cuda"
        smoke(raw)["align"]["detector"] = "mtcnn"  # align.device is read only where the detector runs

    message = refused(change, rf"{section}.device is 'cuda' but CUDA is not available on this machine")
    assert "`cpu`" in message and "`auto` (CUDA where available, else the CPU)" in message


def test_align_device_is_not_checked_where_no_detector_runs():
    raw = copy.deepcopy(RAW)
    smoke(raw)["align"]["device"] = "cuda"
    check(raw)


def test_a_cuda_device_index_the_machine_lacks_is_refused():
    refused(lambda raw: smoke(raw)["train"].update(device="cuda:1"),
            r"train.device is 'cuda:1' but this machine has 1 CUDA device \(cuda:0\)", machine=ONE_GPU)
    raw = copy.deepcopy(RAW)
    smoke(raw)["train"]["device"] = "cuda:0"
    check(raw, machine=ONE_GPU)


def test_this_machine_reports_its_memory_and_cuda_devices():
    machine = preflight.this_machine()
    assert machine.memory_bytes > GIB
    assert len(machine.cuda_memory_bytes) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_a_batch_larger_than_the_training_set_is_refused():
    refused(lambda raw: smoke(raw)["train"].update(batch_size=10**9),
            r"train.batch_size 1000000000 exceeds the 72 training images .*data.synthetic.train_identities 12 "
            r"x train_images_per_identity 6")


def test_the_batch_bound_holds_only_where_params_fix_the_data_size():
    raw = copy.deepcopy(RAW)
    raw["profiles"]["lfw"]["train"]["batch_size"] = 5_000  # LFW's size is known once stage synthesize reads it
    check(raw, "lfw")


@pytest.mark.parametrize("folds", [1000, 5])
def test_evaluate_folds_must_be_every_protocols_own(folds):
    refused(lambda raw: raw["evaluate"].update(folds=folds),
            rf"evaluate.folds is {folds} but pair protocol synth-lfw has 10 folds "
            r"\(data.synthetic.protocols.synth-lfw.folds\)")


def test_evaluate_folds_agree_when_every_protocol_has_as_many():
    raw = copy.deepcopy(RAW)
    raw["evaluate"]["folds"] = 5
    for name, spec in smoke(raw)["data"]["synthetic"]["protocols"].items():
        spec["folds"] = 5
    for name, spec in raw["protocols"].items():
        if spec["kind"] != "identification":
            spec["folds"] = 5
    check(raw)
    raw["protocols"]["synth-calfw"]["folds"] = 10
    with pytest.raises(ValueError, match=r"pair protocol synth-calfw has 10 folds \(protocols.synth-calfw.folds\)"):
        check(raw)


def test_real_benchmarks_fold_counts_are_checked():
    raw = copy.deepcopy(RAW)
    raw["evaluate"]["folds"] = 5  # the synthetic held-out protocols are skipped on real photos
    with pytest.raises(ValueError, match=r"evaluate.folds is 5 but pair protocol lfw-devtest has 10 folds"):
        check(raw, "lfw")


@pytest.mark.parametrize("change, named", [
    (lambda raw: smoke(raw)["align"].update(crop_size=100_000), "align.crop_size=100000"),
    (lambda raw: raw["backbone"].update(embedding_size=10**9), "backbone.embedding_size=1000000000"),
    (lambda raw: smoke(raw)["distill"].update(teacher_embedding_size=10**9),
     "distill.teacher_embedding_size=1000000000"),
    (lambda raw: smoke(raw)["train"].update(batch_size=70) or smoke(raw)["align"].update(crop_size=4096),
     "train.batch_size=70"),
])
def test_a_model_that_cannot_fit_memory_is_refused_naming_its_sizes(change, named):
    message = refused(change, r"needs at least [\d,.]+ GiB .* more than the 24.0 GiB of this machine's memory")
    assert named in message


def test_the_memory_bound_is_the_cuda_devices_where_training_runs_there():
    def change(raw):
        smoke(raw)["train"]["device"] = "cuda"
        smoke(raw)["align"]["crop_size"] = 1024

    refused(change, r"more than the 4.0 GiB of CUDA device cuda:0",
            machine=preflight.Machine(memory_bytes=1024 * GIB, cuda_memory_bytes=(4 * GIB,)))


def test_the_activation_bound_counts_every_convolution_and_linear_output():
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4),
                                  torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    assert preflight.activation_bytes(net, batch_size=6, crop_size=16, element_bytes=2) == 6 * (4 * 8 * 8 + 5) * 2
