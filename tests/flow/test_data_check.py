"""The dataset contract check: each way a dataset can break it is a ContractError naming the dataset
(and, through a recipe, its plugin), never an "internal error" from deep inside collation."""

from __future__ import annotations

from pathlib import Path

import fmkit
import fmkit.app.registry
import pytest
import torch
from fmkit.app.registry import Registry
from fmkit.errors import ContractError
from fmkit.flow.data import DataInfo, Dataset, FieldInfo, TensorDataset
from fmkit.flow.data_check import check_dataset
from reliability_helpers import cli, squash


class Items(Dataset):
    """A dataset over a hand-written list of examples and a declared info."""

    def __init__(self, items: list[dict], info: DataInfo) -> None:
        self.items, self.info = items, info

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def vec(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


FIXED = DataInfo({"x": FieldInfo((2,))})
BROKEN = {
    "items of different shapes": (Items([{"x": vec(2)}, {"x": vec(3)}], FIXED), "has shape (3,)"),
    "a declared field missing": (Items([{"y": vec(2)}], FIXED), "field 'x' declared in the info is missing"),
    "info not matching the data": (Items([{"x": vec(4)}, {"x": vec(4)}], FIXED), "the info declares (2,)"),
    "integer dtype for a continuous field": (Items([{"x": torch.ones(2, dtype=torch.long)}], FIXED),
                                             "is continuous (no num_classes in its info) but has dtype torch.int64"),
    "float class indices": (Items([{"a": vec(3)}], DataInfo({"a": FieldInfo((3,), num_classes=4)})),
                            "is categorical (4 classes) but has dtype torch.float32"),
    "class index out of range": (Items([{"a": torch.tensor([0, 9])}], DataInfo({"a": FieldInfo((2,), 4)})),
                                 "holds class indices in [0, 9]"),
    "label missing": (Items([{"x": vec(2)}], DataInfo({"x": FieldInfo((2,))}, num_cond_classes=3)),
                      "holds no 'cond' tensor"),
    "sizes vary with no mask": (Items([{"x": vec(2, 1)}, {"x": vec(3, 1)}], DataInfo({"x": FieldInfo((None, 1))})),
                                "differ in size between examples but the info declares no mask"),
    "not a state": (Items([vec(2)], FIXED), "not a state (dict of tensors)"),
    "empty": (Items([], FIXED), "holds no examples"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_contract_violation_is_a_contract_error_naming_the_dataset(case):
    ds, needle = BROKEN[case]
    with pytest.raises(ContractError) as info:
        check_dataset(ds, who="dataset 'd' of plugin 'p'")
    text = str(info.value)
    assert needle in text, text
    assert "dataset 'd' of plugin 'p'" in text
    assert "fix:" in text


def test_datasets_that_keep_the_contract_pass():
    check_dataset(TensorDataset(vec(8, 2)))
    check_dataset(TensorDataset({"x": vec(8, 2), "cond": torch.arange(8) % 3}, num_cond_classes=3))
    masked = Items([{"x": vec(2, 1)}, {"x": vec(3, 1)}], DataInfo({"x": FieldInfo((None, 1))}, has_mask=True))

    def pad(items):
        n = max(it["x"].shape[0] for it in items)
        x = torch.zeros(len(items), n, 1)
        mask = torch.zeros(len(items), n, dtype=torch.bool)
        for i, it in enumerate(items):
            x[i, : it["x"].shape[0]] = it["x"]
            mask[i, : it["x"].shape[0]] = True
        return {"x": x, "mask": mask}

    masked.collate = pad
    check_dataset(masked)


class OddSizes(Items):
    def __init__(self) -> None:
        super().__init__([{"x": vec(2)} if i % 2 else {"x": vec(3)} for i in range(64)], FIXED)


class BrokenPlugin:
    @fmkit.hookimpl
    def register_datasets(self, register):
        register("odd_sizes", OddSizes)


def test_a_recipe_on_a_broken_dataset_names_the_dataset_and_its_plugin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", Registry.fresh(entry_points=False, plugins=[]))
    fmkit.app.registry._DEFAULT.add_plugin(BrokenPlugin(), name="acme_data")
    Path("r.yaml").write_text("name: r\ndata: {name: odd_sizes}\nmodel: {name: mlp, hidden: 8, depth: 1}\n"
                              "trainer: {steps: 2, batch_size: 8, device: cpu, progress: false}\n")
    r = cli("train", "r.yaml", "--out", "run")
    text = squash(r.err)
    assert r.code != 0
    assert "internal error" not in text and "Traceback" not in text, text
    assert "dataset 'odd_sizes' of plugin 'acme_data'" in text, text
    assert "has shape (3,); the info declares (2,)" in text, text
