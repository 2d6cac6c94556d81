"""Groups of samples (one group per prompt) as the kernels see them.

`groups` is either an int (a fixed group size; the samples of a group are contiguous) or an integer
tensor of group ids, one per sample, in any order and with any group sizes. Ids are labels: any
integer value, negative ones included, names a group; ids of a narrow dtype (uint8, int8, ...) are
widened to int64 before they are compared, so equal values mean the same group whatever the dtype. Ids become a CSR layout:
one stable sort puts each group's samples together (`order`, skipped when the ids are already
non-decreasing), and `offsets[g] .. offsets[g+1]` delimits group g in that order. Groups are
numbered by ascending id.

The advantage ops also take `groups` as a list / tuple / NumPy array of labels (`label_ids`): labels
are compared by value, never by identity. A 0-d tensor or a NumPy scalar counts as its Python value,
tuples element by element, so 1, 1.0, True, np.int64(1) and torch.tensor(1) are one label (Python's
own equality, as for dict keys), and "1" another. Refused with a ValueError naming the index: a NaN
anywhere in a label (NaN equals nothing, itself included, so it names no group), a tensor or array
of more than one element, an unhashable label, and an object that compares by identity (a class
without __eq__: two equal-looking labels would make two groups). None is one label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import checks


@dataclass(frozen=True)
class GroupLayout:
    n_samples: int
    n_groups: int
    group_size: int  # the fixed size, or 0 when the groups come as ids
    offsets: torch.Tensor | None  # int64 [n_groups + 1] when the groups come as ids
    order: torch.Tensor | None  # int64 [n_samples]: the sorted position -> sample; None = identity
    min_size: int
    max_size: int

    @property
    def fixed(self) -> bool:
        return self.offsets is None

    def sizes(self) -> torch.Tensor:
        """int64 [n_groups] on the layout's device (for the vectorised PyTorch paths)."""
        if self.fixed:
            return torch.full((self.n_groups,), self.group_size, dtype=torch.int64)
        return self.offsets[1:] - self.offsets[:-1]


def require_data(name: str, x: torch.Tensor) -> torch.Tensor:
    """Rejects tensors without values (the meta device): these ops read their inputs' values."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (it has a shape but no values); these ops read the "
                         f"values, pass a CPU or CUDA tensor")
    return x


def require_number(name: str, value) -> float:
    """A real number given as int or float (not bool, str or None), returned as a float."""
    return checks.real_number(name, value)


def _label_value(label, where: str):
    """A label as the value it is compared by (see the module docstring), or a ValueError."""
    if isinstance(label, torch.Tensor):
        if label.numel() != 1 or label.dim() != 0:
            raise ValueError(f"{where} is a tensor of shape {tuple(label.shape)}: a label must be one value "
                             f"(a 0-d tensor, a number, a string, ...)")
        if label.device.type == "meta":
            raise ValueError(f"{where} is a meta tensor (no value to compare)")
        label = label.item()
    elif isinstance(label, np.ndarray):
        if label.ndim != 0:
            raise ValueError(f"{where} is an array of shape {label.shape}: a label must be one value")
        label = label.item()
    elif isinstance(label, np.generic):
        label = label.item()
    if isinstance(label, tuple):
        return tuple(_label_value(x, where) for x in label)
    if label is not None and type(label).__eq__ is object.__eq__:
        raise ValueError(f"{where} is a {type(label).__name__}, which compares by identity: equal-looking "
                         f"labels would make separate groups; use ints, strings or tuples of them")
    try:
        unequal_to_itself = bool(label != label)
    except Exception:  # an __ne__ that returns no bool (an array-like): not a label
        raise ValueError(f"{where} is a {type(label).__name__}, which does not compare as one value") from None
    if unequal_to_itself:
        raise ValueError(f"{where} is {label!r}: a NaN label equals no label (itself included), so it names no "
                         f"group; give every sample a real label")
    return label


def label_ids(labels, n: int, device: torch.device, name: str = "groups") -> torch.Tensor:
    """A list / tuple / 1-D NumPy array of n labels -> int64 ids 0, 1, ... in order of first
    appearance, labels compared by value (the module docstring gives the rule)."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional (one group label per sample), got shape {labels.shape}")
        labels = labels.tolist()
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} labels for {n} samples: give one group label per sample")
    first: dict = {}
    ids = []
    for i, label in enumerate(labels):
        where = f"{name}[{i}]"
        value = _label_value(label, where)
        try:
            ids.append(first.setdefault(value, len(first)))
        except TypeError:
            raise ValueError(f"{name} labels must be hashable (int, str, ...); found {type(label).__name__} "
                             f"at index {i}") from None
    return torch.tensor(ids, dtype=torch.int64, device=device)


def group_layout(groups, n: int, device: torch.device, name: str = "groups", what: str = "rewards") -> GroupLayout:
    """Validates `groups` against n samples and builds the layout (one host sync for ids). A group
    size may come as a Python or NumPy int or as a 0-d integer tensor (read by value)."""
    if isinstance(groups, torch.Tensor) and groups.dim() == 0 and groups.dtype in checks.INT_DTYPES:
        groups = checks.require_index(name, groups)
    elif isinstance(groups, np.integer):
        groups = int(groups)
    if isinstance(groups, bool) or not isinstance(groups, (int, torch.Tensor)):
        raise ValueError(f"{name} must be an int (the group size) or an integer tensor of group ids, "
                         f"got {type(groups).__name__}")
    if isinstance(groups, int):
        groups = checks.require_index(name, groups)
        if groups < 1:
            raise ValueError(f"{name} (the group size) must be >= 1, got {groups}")
        if n % groups:
            raise ValueError(f"{name}={groups} does not divide the {n} {what} into whole groups "
                             f"({n} % {groups} = {n % groups})")
        return GroupLayout(n, n // groups, groups, None, None, groups if n else 0, groups if n else 0)
    checks.require_int(name, groups)
    require_data(name, groups)
    checks.require_shape(name, groups, (n,), f"one group id per element of {what}")
    if groups.device != device:
        raise ValueError(f"{name} is on {groups.device} but {what} is on {device}: move them to one device")
    if n == 0:
        return GroupLayout(0, 0, 0, torch.zeros(1, dtype=torch.int64, device=device), None, 0, 0)
    ids = groups.to(torch.int64)
    order = None
    if n > 1 and not bool((ids[1:] >= ids[:-1]).all()):
        ids, order = torch.sort(ids, stable=True)
    counts = torch.unique_consecutive(ids, return_counts=True)[1]
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=offsets[1:])
    lo_hi = torch.stack([counts.min(), counts.max()]).tolist()
    return GroupLayout(n, counts.numel(), 0, offsets, order, int(lo_hi[0]), int(lo_hi[1]))


def padded_index(layout: GroupLayout, device: torch.device):
    """(group, position) of each sample in the sorted order, and the padded width, for [G, L] views."""
    sizes = layout.sizes().to(device)
    gid = torch.repeat_interleave(torch.arange(layout.n_groups, device=device), sizes)
    pos = torch.arange(layout.n_samples, device=device) - layout.offsets[:-1].to(device)[gid]
    return gid, pos, layout.max_size


def to_padded(x: torch.Tensor, layout: GroupLayout, fill=0, index=None):
    """[n] per-sample values -> [G, L] padded per group (pad value `fill`).

    `index` is padded_index(layout, device), computed once by a caller that pads several tensors.
    """
    if layout.fixed:
        return x.view(layout.n_groups, layout.group_size)
    gid, pos, width = index if index is not None else padded_index(layout, x.device)
    xs = x if layout.order is None else x[layout.order]
    out = torch.full((layout.n_groups, width), fill, dtype=x.dtype, device=x.device)
    out[gid, pos] = xs
    return out


def padded_mask(layout: GroupLayout, device: torch.device, index=None) -> torch.Tensor:
    """[G, L] bool: True where a padded slot holds a real sample."""
    if layout.fixed:
        return torch.ones((layout.n_groups, layout.group_size), dtype=torch.bool, device=device)
    width = layout.max_size
    return torch.arange(width, device=device)[None, :] < layout.sizes().to(device)[:, None]


def from_padded(v: torch.Tensor, layout: GroupLayout, index=None) -> torch.Tensor:
    """[G, L] padded per-group values -> [n] per-sample values (the inverse of to_padded)."""
    if layout.fixed:
        return v.reshape(-1)
    gid, pos, _ = index if index is not None else padded_index(layout, v.device)
    vs = v[gid, pos]
    if layout.order is None:
        return vs
    out = torch.empty_like(vs)
    out[layout.order] = vs
    return out
