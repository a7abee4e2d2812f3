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


def model_problems(spec: StudySpec, data: ImageSet) -> list[str]:
    """Every model builds at its widths, and takes the data's images."""
    problems = []
    size = (data.image_size, data.image_size)
    roles = [("teacher", spec.teacher.arch, [("teacher.width", spec.teacher.width)]),
             ("student", spec.student.arch, _student_widths(spec))]
    for role, arch, widths in roles:
        model = None
        for field, w in widths:
            try:
                built = build_model(arch, num_classes=data.num_classes, width=w)
            except ValueError as exc:
                problems.append(f"{field}={w!r}: {exc}")
                continue
            model = model or built
        if model is None:
            continue
        try:
            with torch.no_grad():  # one image on the CPU: milliseconds (the meta device takes seconds to set up)
                model.eval()(torch.zeros(1, 3, *size))
        except torch.OutOfMemoryError:
            pass
        except RuntimeError as exc:  # torch's shape errors: a pool or conv left with no pixels
            first = str(exc).strip().splitlines()[0][:200]
            problems.append(f"{role}.arch={arch!r}: does not take the data's {size[0]}x{size[1]} images ({first}); "
                            "use larger images (data.image_size) or another model")
        except Exception:  # noqa: BLE001 - a model bug, not a size: its trials fail and record the reason
            pass
    return problems


def checkpoint_problems(spec: StudySpec, num_classes: int | None) -> list[str]:
    """A teacher checkpoint loads with weights_only=True and fits the teacher (``num_classes`` when known)."""
    path = spec.teacher.checkpoint
    if path is None:
        return []
    head = f"teacher.checkpoint={str(path)!r}"
    try:
        payload = load_checkpoint(path)
    except CheckpointError as exc:
        return [f"{head}: {str(exc).removeprefix(f'{path}: ')[:300]}"]
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return [f"{head}: holds no state_dict of tensors (kdsweep saves {{arch, width, num_classes, state_dict}})"]
    t = spec.teacher
    want = {"arch": t.arch, "width": t.width, "num_classes": num_classes}
    saved = {k: payload[k] for k in want if k in payload and want[k] is not None}
    differ = [k for k, v in saved.items() if v != want[k]]
    if differ:
        return [f"{head}: saved for {', '.join(f'{k}={saved[k]!r}' for k in differ)}; the study needs "
                f"{', '.join(f'{k}={want[k]!r}' for k in differ)} (teacher.arch, teacher.width, the data's classes)"]
    if num_classes is None:
        return []
    try:
        model = build_model(t.arch, num_classes=num_classes, width=t.width)
    except ValueError:
        return []  # the width itself is wrong: model_problems names it
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _shape_problems(head, f"{t.arch} x{t.width} with {num_classes} classes", expected,
                           {k: tuple(v.shape) for k, v in state.items()})


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
