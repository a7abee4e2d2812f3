"""Everything a run depends on, checked in one pass before any store, folder or run is made.

``preflight`` loads the data once (and returns it for the run), probes every store the command
will use (``study.probes``, all at once so two dead stores cost one timeout), and checks the
spec against the data: batch sizes against the training split, the models against the image
size, widths and class count, a teacher checkpoint against the teacher. Every problem is one
line naming the field; all of them are raised together as one ``SpecError``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import torch

from kdsweep.core.checkpoint import load_checkpoint
from kdsweep.core.data import ImageSet
from kdsweep.core.models import build_model
from kdsweep.errors import CheckpointError, KdsweepError, SpecError
from kdsweep.study.probes import STORE_TIMEOUT, HttpAuth, masked, store_problems
from kdsweep.study.spec import StudySpec

TRAIN_FILES = {"cifar10": 5, "cifar100": 1}  # official training files: limit_per_file applies to each


def preflight(spec: StudySpec, *, source: str, stores: Iterable[str] = ("storage", "tracking_uri"),
              http_auth: HttpAuth | None = None, timeout: float = STORE_TIMEOUT,
              problems: Iterable[str] = ()) -> ImageSet:
    """Load the data and check the run; raise SpecError with one ``source: field=...`` line per problem.

    ``stores`` names the spec fields holding the stores the command opens; ``problems`` are
    lines the caller found already (reported with these, in the same pass).
    """
    found = list(problems)
    urls = {f: getattr(spec, f) for f in stores}
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        probes = [pool.submit(store_problems, f, url, timeout=timeout, http_auth=http_auth) for f, url in urls.items()]
        data = None
        try:
            from kdsweep.study.runner import load_data

            data = load_data(spec)
        except KdsweepError as exc:
            found.append(str(exc))
        for probe in probes:
            found += [f"{source}: {line}" for line in probe.result()]
    found += [f"{source}: {line}" for line in shared_database_problems(urls)]
    found += [f"{source}: {line}" for line in device_problems(spec)]
    if data is not None:
        found += [f"{source}: {line}" for line in data_problems(spec, data) + model_problems(spec, data)]
    found += [f"{source}: {line}" for line in checkpoint_problems(spec, data.num_classes if data else None)]
    if found or data is None:  # a failed load is one of the lines found
        raise SpecError(found)
    return data


def shared_database_problems(urls: dict[str, str]) -> list[str]:
    # Optuna and MLflow both keep an alembic_version table: one database cannot hold both
    if len(urls) == 2 and len(set(urls.values())) == 1 and "://" in next(iter(urls.values())):
        url = next(iter(urls.values()))
        if not url.startswith(("http://", "https://")):
            return [f"storage and tracking_uri are the same database ({masked(url)!r}); Optuna and MLflow each "
                    "need their own (both keep an alembic_version table)"]
    return []


def device_problems(spec: StudySpec) -> list[str]:
    from kdsweep.core.trainer import resolve_device

    try:
        resolve_device(spec.device)
    except KdsweepError as exc:
        return [str(exc)]
    return []


def _where(spec: StudySpec, data: ImageSet) -> str:
    limit = spec.data.limit_per_file
    cut = f", data.limit_per_file={limit}" if limit is not None else ""
    held = f", {len(data.val_y)} more held out for validation" if data.has_val else ""
    return f"{len(data.train_y)} training images of {data.name} in {str(spec.data.root)!r}{cut}{held}"


def data_problems(spec: StudySpec, data: ImageSet) -> list[str]:
    """Batch sizes, classes and ``limit_per_file`` against the data as loaded."""
    problems = []
    n = len(data.train_y)
    trained = [("student.recipe.batch_size", spec.student.recipe.batch_size)]
    if spec.teacher.mode == "pretrained" and spec.teacher.checkpoint is None:
        trained.append(("teacher.recipe.batch_size", spec.teacher.recipe.batch_size))
    for field, batch in trained:
        if batch > n:  # training drops the last partial batch: no step would ever run
            problems.append(f"{field}={batch}: larger than the training split ({_where(spec, data)}); "
                            f"use at most {n}")
    k = data.num_classes
    if k < 2:
        problems.append(f"data.dataset={spec.data.dataset!r}: {k} class in {str(spec.data.root)!r}; "
                        "a classifier needs at least 2")
    counts = torch.bincount(data.train_y, minlength=k)
    if data.has_val:  # the files as read: training and validation images together
        counts = counts + torch.bincount(data.val_y, minlength=k)
    missing = [data.classes[i] for i in range(k) if counts[i] == 0]
    if missing and k >= 2:
        field = "data.limit_per_file" if spec.data.limit_per_file is not None else "data.root"
        value = spec.data.limit_per_file if spec.data.limit_per_file is not None else str(spec.data.root)
        problems.append(f"{field}={value!r}: the training split has no image of {len(missing)} of the {k} classes "
                        f"(e.g. {missing[:3]}); ({_where(spec, data)})")
    problems += _limit_problems(spec, data, counts)
    return problems


def _limit_problems(spec: StudySpec, data: ImageSet, counts: torch.Tensor) -> list[str]:
    limit = spec.data.limit_per_file
    if limit is None:
        return []
    if spec.data.dataset == "imagefolder":  # the limit cuts each class folder
        largest = int(counts.max())
        if largest < limit:
            return [f"data.limit_per_file={limit}: no class folder holds that many images (the largest holds "
                    f"{largest}), so it cuts nothing; lower it or leave it out"]
        return []
    files = TRAIN_FILES.get(spec.data.dataset)
    read = int(counts.sum())  # the training files' records, validation split included
    if files is not None and read < limit * files:
        return [f"data.limit_per_file={limit}: the {files} training files hold fewer records than that "
                f"({read} images in all), so it cuts nothing; lower it or leave it out"]
    return []


def _student_widths(spec: StudySpec) -> list[tuple[str, float]]:
    searched = spec.search.get("width")
    if searched is None:
        return [("student.width", spec.student.width)]
    values = [searched] if isinstance(searched, (int, float)) else searched.values()
    return [("search.width", float(v)) for v in values]


def _model_problem(role: str, arch: str, field: str, w: float, exc: Exception) -> str:
    from kdsweep.core.models import parse_arch

    try:
        builtin = parse_arch(arch).source == "builtin"
    except ValueError:
        builtin = False
    # a built-in's width is the field at fault; any other source's failure is its arch string's
    return f"{field}={w!r}: {exc}" if builtin else f"{role}.arch={arch!r}: {exc}"


def model_problems(spec: StudySpec, data: ImageSet) -> list[str]:
    """Every model builds at its widths, and maps a batch of 2 of the data's images to [2, classes]."""
    from kdsweep.core.models import parse_arch

    problems = []
    size = input_size(data)
    roles = [("teacher", spec.teacher.arch, spec.teacher.arch_args, [("teacher.width", spec.teacher.width)]),
             ("student", spec.student.arch, spec.student.arch_args, _student_widths(spec))]
    if spec.search.arch is not None:  # every arch the trials can draw, at its widths
        from kdsweep.study.space import FIXED_WIDTH, archs, scales

        roles += [("search", arch, {}, _student_widths(spec) if scales(arch)
                   else [("search.arch", FIXED_WIDTH)]) for arch in archs(spec) if arch != spec.student.arch]
    for role, arch, args, widths in roles:
        model = None
        for field, w in widths:
            try:
                built = build_model(arch, num_classes=data.num_classes, width=w, arch_args=args)
            except ValueError as exc:
                problems.append(_model_problem(role, arch, field, w, exc))
                break
            model = model or built
        if model is None:
            continue
        head = f"{role}.arch={arch!r}"
        try:
            with torch.no_grad():  # two images on the CPU: milliseconds (the meta device takes seconds to set up)
                out = model.eval()(torch.zeros(2, 3, *size))
        except torch.OutOfMemoryError:
            continue
        except RuntimeError as exc:  # torch's shape errors: a pool or conv left with no pixels
            first = str(exc).strip().splitlines()[0][:200]
            problems.append(f"{head}: does not take the data's {size[0]}x{size[1]} images ({first}); "
                            "use larger images (data.image_size) or another model")
            continue
        except Exception as exc:  # noqa: BLE001 - a built-in's bug fails its trials with the reason; a user's is named
            if parse_arch(arch).source != "builtin":
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                problems.append(f"{head}: a forward of 2 {size[0]}x{size[1]} images failed: {type(exc).__name__}: "
                                f"{first}")
            continue
        shape = list(out.shape) if isinstance(out, torch.Tensor) else None
        if shape != [2, data.num_classes]:
            got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
            problems.append(f"{head}: a batch of 2 {size[0]}x{size[1]} images gave {got}; expected "
                            f"[2, {data.num_classes}] (one logit per class of the data)")
    return problems


def input_size(data: ImageSet) -> tuple[int, int]:
    """The images' size as the models see them (``data.image_size`` resizes CIFAR batches on the device)."""
    size = getattr(data, "input_size", None)
    if not size:
        size = data.image_size  # the stored size (a stream set's is the size its loader crops to)
    return (size, size)


def _read_weights(field: str, path) -> tuple[dict | None, dict | None, str | None]:
    """(payload metadata, tensors, problem line) of a teacher weights file."""
    from kdsweep.core.weights import read_state_dict, unwrap

    head = f"teacher.{field}={str(path)!r}"
    try:
        if str(path).endswith(".safetensors"):
            return {}, read_state_dict(path), None
        payload = load_checkpoint(path)
        meta = payload if isinstance(payload, dict) and "state_dict" in payload else {}  # kdsweep's own file
        return meta, unwrap(payload, path), None
    except CheckpointError as exc:
        return None, None, f"{head}: {str(exc).removeprefix(f'{path}: ')[:300]}"


def checkpoint_problems(spec: StudySpec, num_classes: int | None) -> list[str]:
    """A teacher checkpoint loads with weights_only=True and fits the teacher (``num_classes`` when known);
    a ``teacher.init`` file fits it but for the classifier head."""
    t = spec.teacher
    if t.init is not None:
        return init_problems(spec, num_classes)
    path = t.checkpoint
    if path is None:
        return []
    head = f"teacher.checkpoint={str(path)!r}"
    meta, state, problem = _read_weights("checkpoint", path)
    if problem:
        return [problem]
    want = {"arch": t.arch, "width": t.width, "num_classes": num_classes}
    saved = {k: meta[k] for k in want if k in meta and want[k] is not None}
    differ = [k for k, v in saved.items() if v != want[k]]
    if differ:
        return [f"{head}: saved for {', '.join(f'{k}={saved[k]!r}' for k in differ)}; the study needs "
                f"{', '.join(f'{k}={want[k]!r}' for k in differ)} (teacher.arch, teacher.width, the data's classes)"]
    if num_classes is None:
        return []
    try:
        model = build_model(t.arch, num_classes=num_classes, width=t.width, arch_args=t.arch_args)
    except ValueError:
        return []  # the arch or width itself is wrong: model_problems names it
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _shape_problems(head, f"{t.arch} x{t.width} with {num_classes} classes", expected,
                           {k: tuple(v.shape) for k, v in state.items()})


def init_problems(spec: StudySpec, num_classes: int | None) -> list[str]:
    """``teacher.init``: readable, and every tensor but the classifier head's fits the teacher."""
    from kdsweep.core.weights import replaced_head

    t = spec.teacher
    _, state, problem = _read_weights("init", t.init)
    if problem or num_classes is None:
        return [problem] if problem else []
    try:
        model = build_model(t.arch, num_classes=num_classes, width=t.width, arch_args=t.arch_args)
    except ValueError:
        return []  # model_problems names it
    try:
        replaced_head(model, state, t.init, f"teacher {t.arch}")
    except CheckpointError as exc:
        return [f"teacher.init={str(t.init)!r}: {str(exc).removeprefix(f'{t.init}: ')[:300]}"]
    return []


def _shape_problems(head: str, what: str, expected: dict[str, tuple], got: dict[str, tuple]) -> list[str]:
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    other = [k for k in expected if k in got and got[k] != expected[k]]
    if not (missing or extra or other):
        return []
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. {missing[0]!r})")
    if extra:
        parts.append(f"{len(extra)} not in the model (e.g. {extra[0]!r})")
    if other:
        k = other[0]
        parts.append(f"{len(other)} of another shape (e.g. {k!r}: {list(got[k])}, the model has {list(expected[k])})")
    return [f"{head}: does not fit teacher {what}: {'; '.join(parts)}"]
