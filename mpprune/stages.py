"""The stages of a run (:data:`STAGES`) and the state they share (:class:`Run`); :mod:`mpprune.run` runs them.

In order, each from the config's section of the same name (:mod:`mpprune.config`):

* ``load`` -- the dense model and the checksums of the inputs;
* ``analyze`` -- the per-layer MP fits of the dense model (``stages/analyze/spectrum.{json,md}``);
* ``prune`` -- ``[method]`` through :func:`mpprune.methods.prune` (``stages/prune/``);
* ``kn`` -- ``[kn]``: :class:`mpprune.methods.NM` whose ``source`` is the prune stage's masks (written to
  ``stages/kn_source/``, for the layers ``[kn]`` may project; a dense source without a ``[method]``); the
  values it projects are the pruned model's where the masks kept them and the dense model's elsewhere
  (digest §3.7 step 2); the layers it does not project keep their pruned weights and masks. With a
  ``[tome]`` its calibration statistics are captured on the token-merged graph, as in the paper
  (``stages/kn/``);
* ``tome`` -- ``[tome]``: :func:`mpprune.tome.apply_tome` on the current model from the kn stage on (the
  dense teacher and the certificate's reference stay unmerged); it adds no weights, so checkpoints hold
  the unpatched model and the manifest's config records ``r`` (apply it again after
  :func:`mpprune.checkpoint.load_pruned`);
* ``distill`` -- ``[distill]``: :func:`mpprune.distill.distill` of the current model against the dense
  one, masks frozen, on the TRAIN split of ``data.calib``; its training state ``stages/distill/
  train_state.pt`` is written every ``checkpoint_every`` steps, so a run killed mid-distillation resumes
  from the last one (:func:`mpprune.train.fit`: the same weights as an uninterrupted run on CPU);
  the result goes to ``stages/distill/model/``. Under ``torchrun`` every process takes part in this
  stage only (:func:`mpprune.run.run`);
* ``gate`` -- ``[gate]`` on the last weights: :meth:`mpprune.gate.Gate.apply` against the dense model
  (its permuted copy when ``[kn]`` folded permutations), with token merging off: the certificate engine
  runs the network from a layer on, which a merged graph cannot, so gate and certificate speak of the
  weights, not of the merged graph (the evaluation and the MACs do run it merged). Without a ``[kn]``
  or ``[distill]`` the gate runs inside the prune stage (the prune stage's weights are the final ones),
  exactly as ``mpprune prune --gate`` does (``stages/gate/``);
* ``certify`` -- :func:`mpprune.certify.certify` of the final model against the gate's reference, token
  merging off (``stages/certificate.json``);
* ``evaluate`` -- top-1 accuracy of the dense and the final model on the val data;
* ``macs`` -- :func:`mpprune.macs.count_macs` of the dense and the final model (with its ToMe schedule),
  both conventions, for one input of the calibration (or evaluation) data's shape (a model the counter
  cannot trace is recorded as ``unavailable`` with the reason: a report, not a check);
* ``save`` -- the final checkpoint ``model/``: the prune report, the certificate, and in its manifest the
  evaluation, the MAC counts and the distillation summary.

A stage that changes the weights writes them as a checkpoint, so a resumed run starts later stages from
exactly those weights. :func:`skip_reason` is the one rule saying which stages do nothing for a config
(runs, dry runs and ``state.json`` all read it).
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mpprune.checkpoint import compact, load_pruned, save_pruned
from mpprune.config import RunConfig, make_gate
from mpprune.data import (
    SplitDataset,
    accuracy,
    calibration_batches,
    calibration_dataset,
    calibration_indices,
    eval_dataset,
    is_builtin_dataset,
)
from mpprune.errors import BadInput
from mpprune.io import input_record, output_record, utc_now
from mpprune.masks import MaskStore
from mpprune.models import build_model, check_finite
from mptheory.io import atomic_write_bytes, atomic_write_text, dumps_json, jsonable

__all__ = [
    "STAGES",
    "STAGE_FUNCTIONS",
    "STATE_FILE",
    "RUN_COMMAND",
    "FINAL_CHECKPOINT",
    "PRUNE_REPORT_FILE",
    "TRAIN_STATE_FILE",
    "TRAIN_AUGMENTATION",
    "Run",
    "gate_summary",
    "skip_reason",
    "gate_in_prune",
    "resolve_layers",
]

STAGES = ("load", "analyze", "prune", "kn", "tome", "distill", "gate", "certify", "evaluate", "macs", "save")
STATE_FILE = "state.json"
RUN_COMMAND = "mpprune run"
FINAL_CHECKPOINT = "model"
PRUNE_REPORT_FILE = "prune_report.json"
TRAIN_STATE_FILE = "train_state.pt"
#: The folders of the stages that write weights, in stage order (the last completed one is current).
_WEIGHT_DIRS = {"prune": Path("stages") / "prune", "kn": Path("stages") / "kn",
                "distill": Path("stages") / "distill" / "model", "gate": Path("stages") / "gate"}
#: timm training augmentation of the distillation data (digest §3.12; Mixup is not applied).
TRAIN_AUGMENTATION: dict[str, Any] = {"auto_augment": "rand-m9-mstd0.5", "re_prob": 0.25, "hflip": 0.5,
                                      "color_jitter": 0.4}
#: The prune masks the kn stage starts from (``masks.safetensors``: the layers it may project).
_KN_SOURCE_DIR = Path("stages") / "kn_source"


def gate_summary(verdict: Any) -> list[dict[str, Any]] | None:
    """Per-layer gate verdicts ``[{name, status, sparsity_requested, sparsity_final, certified_fraction,
    estimator, sound, reason}]`` from a gate result or its dict (None when there was no gate)."""
    if verdict is None:
        return None
    d = jsonable(verdict)
    rows = []
    for gl in d.get("layers", []) if isinstance(d, dict) else []:
        cert = gl.get("certificate") or {}
        keys = ("name", "status", "sparsity_requested", "sparsity_final", "reason")
        rows.append({k: gl.get(k) for k in keys}
                    | {k: cert.get(k) for k in ("certified_fraction", "estimator", "sound")})
    return rows


def gate_in_prune(cfg: RunConfig) -> bool:
    """Whether the gate runs inside the prune stage: no later stage changes the weights."""
    return cfg.gate is not None and cfg.method is not None and cfg.kn is None and cfg.distill is None


def skip_reason(stage: str, cfg: RunConfig) -> str | None:
    """Why ``stage`` does nothing under ``cfg`` (None when it runs): the one rule for runs and dry runs."""
    if stage in ("analyze", "certify", "evaluate", "macs") and not getattr(cfg, stage):
        return f"{stage} = false in the config"
    sections = {"prune": ("method", cfg.method), "kn": ("kn", cfg.kn), "tome": ("tome", cfg.tome),
                "distill": ("distill", cfg.distill), "gate": ("gate", cfg.gate)}
    if stage in sections and sections[stage][1] is None:
        return f"no [{sections[stage][0]}] in the config"
    if stage == "gate" and gate_in_prune(cfg):
        return "the gate ran inside the prune stage (no later stage changes the weights)"
    if stage in ("certify", "evaluate", "save") and not cfg.prunes:
        return "no [method] or [kn] in the config"
    if stage == "macs" and not cfg.prunes and cfg.tome is None:
        return "nothing pruned or merged ([method], [kn] and [tome] all absent)"
    if stage == "certify" and cfg.calib is None:
        return "no calibration data in the config"
    if stage == "evaluate" and (cfg.data is None or cfg.data.eval_source is None):
        return "no evaluation (val) data in the config"
    if stage == "macs" and (cfg.data is None or (cfg.data.calib is None and cfg.data.eval_source is None)):
        return "no data to read the input size from"
    return None


def resolve_layers(model: nn.Module, patterns: tuple[str, ...]) -> tuple[str, ...]:
    """The prunable layers of ``model`` whose names match one of the glob ``patterns`` (BadInput: none)."""
    from mpprune.layers import find_layers

    names = tuple(i.name for i in find_layers(model) if any(fnmatch.fnmatchcase(i.name, p) for p in patterns))
    if not names:
        raise BadInput(f"[kn] layers {list(patterns)} match no prunable layer of the model")
    return names


@dataclass
class Run:
    """Mutable state of one run; heavy objects are built lazily so skipped stages cost nothing."""

    config: RunConfig
    out: Path
    state: dict[str, Any]
    progress: bool = True
    command: str = RUN_COMMAND
    _spec: dict[str, Any] | None = None
    _dense: nn.Module | None = None
    _current: tuple[nn.Module, MaskStore, Any] | None = None
    _calib: list[Any] | None = None
    stage: str | None = None  # the stage running now (set by mpprune.run)

    @property
    def spec(self) -> dict[str, Any]:
        if self._spec is None:
            self._spec = self.config.model.spec()
        return self._spec

    def inputs(self) -> list[Path]:
        return self.config.inputs()

    def dense(self) -> nn.Module:
        """The dense model as loaded (never patched nor changed)."""
        if self._dense is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore" if "load" in self.state["completed"] else "default")
                self._dense = build_model(self.spec)
            check_finite(self._dense)
        return self._dense

    def merged(self, model: nn.Module) -> nn.Module:
        """``model`` token-merged by ``[tome]`` (in place) from the kn stage on (the kn stage captures its
        statistics on the merged graph); else ``model``."""
        from mpprune.tome import apply_tome

        tome = self.config.tome
        if tome is None or self.stage is None or STAGES.index(self.stage) < STAGES.index("kn"):
            return model
        return apply_tome(model, tome.schedule(), prop_attn=tome.prop_attn)

    def reference(self) -> nn.Module:
        """The dense model the current one is certified against: a copy, permuted as ``[kn]`` folded
        permutations into the current one; never token-merged (the certificate engine runs the network
        from a layer on, which a merged graph cannot: gate and certificate are those of the weights with
        token merging off)."""
        ref = self.dense()
        kn = (self.state["results"].get("kn") or {})
        if kn.get("permutations"):
            from mpprune.methods.permute import permuted_reference  # type: ignore[import-not-found]

            ref = permuted_reference(ref, load_pruned(self.out / _WEIGHT_DIRS["kn"])[2].get("report"))
        else:
            ref = copy.deepcopy(ref)
        return _explicit_attention(ref)

    def unmerged(self) -> nn.Module:
        """A copy of the current model without token merging, attention on its explicit path."""
        from mpprune.tome import remove_tome

        return _explicit_attention(remove_tome(copy.deepcopy(self.current()[0])))

    def calibration(self) -> list[Any] | None:
        data = self.config.data
        if data is None or data.calib is None:
            return None
        if self._calib is None:
            ds = calibration_dataset(data.calib, self.spec, self.dense())
            if len(ds) == 0:
                raise BadInput(f"calibration data {data.calib!r} is empty")
            self._calib = calibration_batches(ds, min(data.n_calib, len(ds)), data.batch_size, data.seed)
        return self._calib

    def current(self) -> tuple[nn.Module, MaskStore, Any]:
        """The model of the last completed stage that wrote weights (token-merged once ``[tome]`` is
        reached), its masks and its prune report."""
        if self._current is None:
            done = [s for s in _WEIGHT_DIRS if s in self.state["completed"] and not self._skipped(s)]
            if not done:
                raise BadInput("no stage has written weights yet")
            model, masks, manifest = load_pruned(self.out / _WEIGHT_DIRS[done[-1]])
            self._current = (self.merged(model), masks, manifest.get("report"))
        return self._current

    def _skipped(self, stage: str) -> bool:
        return "skipped" in (self.state["results"].get(stage) or {})

    def save_weights(self, stage: str, model: nn.Module, masks: MaskStore, report: Any) -> str:
        """Write the weights of ``stage`` (the unpatched model); they are the current ones from now on."""
        from mpprune.tome import is_tome_patched, remove_tome

        plain = remove_tome(copy.deepcopy(model)) if is_tome_patched(model) else model
        save_pruned(self.out / _WEIGHT_DIRS[stage], plain, masks, report, config=self.manifest_config(),
                    factory=self.spec, output=self.output_record())
        self._current = None  # read back by the next stage: a fresh and a resumed run see the same objects
        return str(_WEIGHT_DIRS[stage])

    def manifest_config(self) -> dict[str, Any]:
        """The run config as manifests record it, without its output folder: the method section resolved
        to its config dataclass (every field, its ``type``, and the registered ``name``)."""
        from mpprune.methods._common import config_dict

        cfg = self.config
        out = cfg.to_dict()
        out.pop("out")  # where the run was written is not part of the model (the prune command's is hidden)
        if cfg.method is not None:
            out["method"] = {"name": cfg.method.name, **config_dict(cfg.method.build())}
        return out

    def output_record(self) -> dict[str, Any]:
        """The output record of this run's checkpoints: the command and the config digest."""
        return output_record(self.command) | {"config_sha256": self.state["config_sha256"]}

    def save_state(self) -> None:
        self.state["updated"] = utc_now()
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / STATE_FILE, dumps_json(self.state))


def _explicit_attention(model: nn.Module) -> nn.Module:
    """``model`` with timm's fused attention switched to its explicit softmax path (the same function), in
    place: the certificate engine's forward-mode derivatives do not pass through the CPU flash kernel."""
    for m in model.modules():
        if getattr(m, "fused_attn", None) is True:
            m.fused_attn = False  # type: ignore[assignment]
    return model


def _follower() -> bool:
    """Whether this is a ``torchrun`` process other than rank 0 (it takes part in distillation only)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def _skippable(stage: str) -> Callable[[Callable[[Run], dict[str, Any]]], Callable[[Run], dict[str, Any]]]:
    """A stage function that returns ``{"skipped": reason}`` when :func:`skip_reason` says so."""

    def deco(fn: Callable[[Run], dict[str, Any]]) -> Callable[[Run], dict[str, Any]]:
        def stage_fn(r: Run) -> dict[str, Any]:
            reason = skip_reason(stage, r.config)
            return {"skipped": reason} if reason is not None else fn(r)

        stage_fn.__name__ = stage_fn.__qualname__ = fn.__name__
        stage_fn.__doc__ = fn.__doc__
        return stage_fn

    return deco


def _stage_load(r: Run) -> dict[str, Any]:
    model = r.dense()
    return {
        "model": r.spec,
        "inputs": [input_record(p) for p in r.inputs()],
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


@_skippable("analyze")
def _stage_analyze(r: Run) -> dict[str, Any]:
    from mpprune.spectrum import analyze

    rep = analyze(r.dense(), progress=r.progress, name=r.config.model.name)
    d = r.out / "stages" / "analyze"
    d.mkdir(parents=True, exist_ok=True)
    rep.to_json(d / "spectrum.json")
    rep.to_markdown(d / "spectrum.md")
    return {"summary": rep.summary(), "files": ["stages/analyze/spectrum.json", "stages/analyze/spectrum.md"]}


@_skippable("prune")
def _stage_prune(r: Run) -> dict[str, Any]:
    from mpprune.methods import prune

    assert r.config.method is not None
    method = r.config.method.build()
    gate = make_gate(r.config.gate) if gate_in_prune(r.config) else None
    calib = r.calibration()
    res = prune(r.dense(), method, calibration=calib, gate=gate, train_data=calib, progress=r.progress)
    verdict = res.report.gate  # failing layers were backed off or left dense by the gate itself
    where = r.save_weights("prune", res.model, res.masks, res.report)
    return {"global_sparsity": res.report.global_sparsity, "gate": gate_summary(verdict), "checkpoint": where}


def _value_source(r: Run) -> tuple[nn.Module, MaskStore | None]:
    """The model the kn stage projects and the prune stage's masks: the pruned weights where the prune
    stage kept them, the dense weights where it removed them (free restoration decides which come back;
    the layers k:n leaves alone get their pruned weights back afterwards, :func:`_keep_unprojected`)."""
    import torch

    from mpprune.masks import weight_of

    if r.config.method is None:
        return copy.deepcopy(r.dense()), None
    pruned, masks, _ = r.current()
    model = copy.deepcopy(pruned)
    dense = dict(r.dense().named_modules())
    with torch.no_grad():
        for name, mod, keep in masks.bind(model).entries():
            w = weight_of(mod)
            w.copy_(torch.where(keep.to(w.device), w, weight_of(dense[name]).to(w.dtype)))
    return model, masks.bind(model)


def _keep_unprojected(model: nn.Module, kn_masks: MaskStore, prior: MaskStore | None) -> list[str]:
    """Give every layer the prune stage masked and k:n did not project its pruned weights and mask back
    (in place: ``model``'s weights, ``kn_masks``); returns their names."""
    import torch

    from mpprune.masks import weight_of

    if prior is None:
        return []
    mods = dict(model.named_modules())
    kept = [name for name in prior if name not in kn_masks]
    with torch.no_grad():
        for name in kept:
            w = weight_of(mods[name])
            w.mul_(prior[name].to(w.device, w.dtype))
            kn_masks.add(name, mods[name], prior[name])
    return kept


@_skippable("kn")
def _stage_kn(r: Run) -> dict[str, Any]:
    from mpprune.methods import prune

    kn = r.config.kn
    assert kn is not None
    model, prior = _value_source(r)
    include = resolve_layers(model, kn.layers) if kn.layers is not None else None
    source = None
    if prior is not None:  # NM reads the prior masks from a folder (the report records its path, not masks)
        from safetensors.torch import save as st_save

        from mpprune.checkpoint import MASKS_FILE

        masks = {n: m.contiguous() for n, m in prior.to_state_dict().items()
                 if include is None or n in include}
        folder = r.out / _KN_SOURCE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / MASKS_FILE, st_save(masks))
        source = str(folder)
    method = kn.build(source=source, include=include)
    res = prune(r.merged(_explicit_attention(model)), method, calibration=r.calibration(),
                progress=r.progress)
    unprojected = _keep_unprojected(res.model, res.masks, prior)
    where = r.save_weights("kn", res.model, res.masks, res.report)
    details = [lr.details for lr in res.report.layers if getattr(lr, "details", None)]
    permutations = sum(len(d.get("permutations") or ()) for d in details if isinstance(d, Mapping))
    return {"pattern": method.pattern, "global_sparsity": res.report.global_sparsity,
            "layers": [lr.name for lr in res.report.layers], "pruned_unprojected": unprojected,
            "permutations": permutations, "notes": list(res.report.notes), "checkpoint": where}


@_skippable("tome")
def _stage_tome(r: Run) -> dict[str, Any]:
    from mpprune.tome import apply_tome, resolve_r, tome_schedule

    tome = r.config.tome
    assert tome is not None
    probe: Any = apply_tome(copy.deepcopy(r.dense()), tome.schedule(), prop_attn=tome.prop_attn)
    schedule = resolve_r(tome.schedule(), len(probe.blocks))
    n_tokens = int(probe.patch_embed.num_patches) + int(probe.num_prefix_tokens)
    if r.config.prunes:
        r._current = None  # the later stages read the current model token-merged
    return {"r": schedule, "prop_attn": tome.prop_attn,
            "tokens": tome_schedule(n_tokens, int(probe.num_prefix_tokens), schedule)}


def _train_split(r: Run) -> SplitDataset:
    """The TRAIN split of ``data.calib`` for distillation (with ``augment``, timm's training transforms
    with :data:`TRAIN_AUGMENTATION` for the ImageFolder data of a timm model), cut to a stratified seeded
    subset of ``n_train`` items."""
    from torch.utils.data import Subset

    data, dcfg = r.config.data, r.config.distill
    assert data is not None and data.calib is not None and dcfg is not None
    ds = calibration_dataset(data.calib, r.spec, r.dense())
    if dcfg.augment and r.spec.get("kind") == "timm" and not is_builtin_dataset(data.calib):
        import timm.data

        from mpprune.data import image_folder

        cfg = timm.data.resolve_data_config({}, model=r.dense())
        ds = image_folder(data.calib, "train", transform=timm.data.create_transform(
            **cfg, is_training=True, **TRAIN_AUGMENTATION))
    if dcfg.n_train is not None and dcfg.n_train < len(ds):
        idx = np.sort(calibration_indices(np.asarray(ds.targets), dcfg.n_train, data.seed))
        ds = SplitDataset(Subset(ds, idx.tolist()), "train", targets=np.asarray(ds.targets)[idx],
                          classes=ds.classes)
    return ds


@_skippable("distill")
def _stage_distill(r: Run) -> dict[str, Any]:
    from mpprune import distill as D

    dcfg = r.config.distill
    assert dcfg is not None
    student, masks, report = r.current()
    student = copy.deepcopy(student)
    folder = r.out / "stages" / "distill"
    follower = _follower()
    if not follower:
        folder.mkdir(parents=True, exist_ok=True)
    train = _train_split(r)
    res = D.distill(student, r.dense(), masks, train, dcfg.build(), checkpoint=folder / TRAIN_STATE_FILE,
                    checkpoint_every=dcfg.checkpoint_every, progress=r.progress)
    res.model.cpu()  # the later stages (and the teacher, moved to the training device) work on the CPU
    r.dense().cpu()
    bn = 0
    if dcfg.bn_batches:  # its own step, on the same training data in order (every process alike)
        from torch.utils.data import DataLoader

        loader = DataLoader(train, batch_size=dcfg.build().batch_size, shuffle=False)
        bn = D.reestimate_batchnorm(res.model, loader, max_batches=dcfg.bn_batches)
    if follower:  # a torchrun process other than rank 0 writes nothing
        return {"fit": res.to_dict(), "n_train": len(train), "bn_reestimated": bn}
    where = r.save_weights("distill", res.model, masks.bind(res.model), report)
    return {"fit": res.to_dict(), "n_train": len(train), "bn_reestimated": bn, "checkpoint": where,
            "train_state": str(Path("stages") / "distill" / TRAIN_STATE_FILE)}


@_skippable("gate")
def _stage_gate(r: Run) -> dict[str, Any]:
    gate = make_gate(r.config.gate)
    _, masks, report = r.current()
    verdict = gate.apply(r.reference(), r.unmerged(), masks, r.calibration())
    rep = dict(report) if isinstance(report, Mapping) else {}
    rep["gate"] = jsonable(verdict)
    where = r.save_weights("gate", r.merged(verdict.model), verdict.masks, rep)
    return {"gate": gate_summary(verdict), "checkpoint": where}


@_skippable("certify")
def _stage_certify(r: Run) -> dict[str, Any]:
    from mpprune.certify import certify

    if r.config.kn is None and r.config.tome is None and r.config.distill is None:
        ref, model = r.dense(), r.current()[0]  # a prune-only run certifies exactly as before
    else:
        ref, model = r.reference(), r.unmerged()
    rep = certify(ref, model, r.calibration())
    d = jsonable(rep)
    (r.out / "stages").mkdir(parents=True, exist_ok=True)
    atomic_write_text(r.out / "stages" / "certificate.json", dumps_json(d))
    return {"certificate": compact(d), "file": "stages/certificate.json"}


@_skippable("evaluate")
def _stage_evaluate(r: Run) -> dict[str, Any]:
    data = r.config.data
    assert data is not None and data.eval_source is not None
    ds = eval_dataset(data.eval_source, r.spec, r.dense())
    limit = data.n_eval
    model, _, _ = r.current()
    split = (r.state.get("data") or {}).get("evaluation") or {}
    return {"data": data.eval_source, "split": split.get("split", ds.split), "path": split.get("path"),
            "n": len(ds) if limit is None else min(limit, len(ds)),
            "accuracy_dense": accuracy(r.dense(), ds, limit=limit),
            "accuracy_pruned": accuracy(model, ds, limit=limit)}


@_skippable("macs")
def _stage_macs(r: Run) -> dict[str, Any]:
    from mpprune.macs import count_macs
    from mpprune.tome import is_tome_patched

    data = r.config.data
    assert data is not None
    source = data.calib if data.calib is not None else data.eval_source
    assert source is not None
    ds = (calibration_dataset if source == data.calib else eval_dataset)(source, r.spec, r.dense())
    shape = tuple(int(d) for d in ds[0][0].shape)
    model = r.current()[0] if r.config.prunes else r.merged(copy.deepcopy(r.dense()))
    try:
        final = count_macs(model, shape)
        dense = count_macs(r.dense(), shape)
    except BadInput as exc:  # a report, not a check: a model the counter cannot trace does not fail the run
        return {"input_size": list(shape), "unavailable": f"count_macs: {exc}"}
    out = {"input_size": list(shape), "dense_model": dense.to_dict() | {"layers": None},
           "final_model": final.to_dict(), "tome": is_tome_patched(model)}
    for conv, totals in final.totals.items():
        out[conv] = {"dense": dense.dense, "sparse": totals.sparse,
                     "reduction": 1 - totals.sparse / dense.dense if dense.dense else None,
                     "speedup": dense.dense / totals.sparse if totals.sparse else None}
    return out


@_skippable("save")
def _stage_save(r: Run) -> dict[str, Any]:
    from mpprune.tome import is_tome_patched, remove_tome

    model, masks, report = r.current()
    results = r.state["results"]
    cert = results.get("certify", {}).get("certificate")
    if cert is None and isinstance(report, Mapping):
        cert = report.get("gate")  # the gate's verdicts are the certificate of a gated model
    ev = results.get("evaluate")
    if ev is not None and "skipped" in ev:
        ev = None
    macs = results.get("macs")
    extra = {"evaluation": ev, "data": r.state.get("data")}
    if macs is not None and "executed" in macs:
        extra["macs"] = {k: macs[k] for k in ("input_size", "executed", "paper", "tome")}
    dist = results.get("distill")
    if dist is not None and "skipped" not in dist:
        extra["distill"] = {"fit": dist["fit"], "n_train": dist["n_train"]}
    plain = remove_tome(copy.deepcopy(model)) if is_tome_patched(model) else model
    out = save_pruned(r.out / FINAL_CHECKPOINT, plain, masks, report, config=r.manifest_config(),
                      inputs=r.inputs(), certificate=cert, factory=r.spec, extra=extra,
                      extra_files={PRUNE_REPORT_FILE: report}, output=r.output_record())
    return {"checkpoint": str(out)}


#: Stage name → function (looked up at call time, so tests may replace one to simulate a crash).
STAGE_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "load": _stage_load,
    "analyze": _stage_analyze,
    "prune": _stage_prune,
    "kn": _stage_kn,
    "tome": _stage_tome,
    "distill": _stage_distill,
    "gate": _stage_gate,
    "certify": _stage_certify,
    "evaluate": _stage_evaluate,
    "macs": _stage_macs,
    "save": _stage_save,
}
assert tuple(STAGE_FUNCTIONS) == STAGES
