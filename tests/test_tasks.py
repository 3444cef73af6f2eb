import datasets
import pandas as pd
import pytest

from conftest import toy_frame
from fusionkit.core.errors import TaskError
from fusionkit.data.tasks import load_task, read_orange_tab, task_from


def test_task_from_dataframe_carves_stratified_deterministic_splits():
    df = toy_frame(200)
    a = task_from(df, name="toy")
    b = task_from(df, name="toy")
    assert set(a.data) == {"train", "validation", "test"}
    assert sum(a.sizes().values()) == 200
    assert a.sizes()["test"] == 20
    assert a.data["test"]["text"] == b.data["test"]["text"]  # deterministic
    assert a.label_names == ["negative", "positive"]
    assert a.label_counts("test") == {"negative": 10, "positive": 10}  # stratified
    assert a.fingerprint() == b.fingerprint()


def test_task_from_csv_and_dataset(tmp_path):
    df = toy_frame(100).rename(columns={"text": "sentence", "label": "y"})
    path = tmp_path / "mine.csv"
    df.to_csv(path, index=False)
    t = task_from(path, text_column="sentence", label_column="y")
    assert t.num_labels == 2 and sum(t.sizes().values()) == 100
    ds = datasets.Dataset.from_pandas(df)
    assert task_from(ds, text_column="sentence", label_column="y").fingerprint() == t.fingerprint()


def test_missing_columns_name_the_fix():
    with pytest.raises(TaskError, match=r"no column\(s\) \['review'\].*text_column="):
        task_from(toy_frame(20), text_column="review")


def test_unknown_label_and_bad_input():
    with pytest.raises(TaskError, match="not among the label names"):
        task_from(toy_frame(20), label_names=["negative"])
    with pytest.raises(TaskError, match="no such file"):
        task_from("/nonexistent.csv")
    with pytest.raises(TaskError, match="cannot make a task"):
        task_from(42)


def test_unknown_task_offline_fails_fast(monkeypatch):
    import fusionkit.data.tasks as tasks

    monkeypatch.setattr(tasks, "hub_reachable", lambda: False)
    with pytest.raises(TaskError, match="not bundled .*sentiment.*task_from"):
        load_task("no-such/dataset")


def test_duplicates_never_leak_across_splits():
    df = toy_frame(200)
    df = pd.concat([df, df.iloc[:50]], ignore_index=True)  # 50 repeated texts
    t = task_from(df)
    texts = [x for s in ("train", "validation", "test") for x in t.data[s]["text"]]
    assert len(texts) == len(set(texts)) == len(set(df["text"]))
    given_test = toy_frame(20, seed=5)
    t2 = task_from(datasets.DatasetDict(train=datasets.Dataset.from_pandas(pd.concat([df, given_test])),
                                        test=datasets.Dataset.from_pandas(given_test)))
    assert not set(t2.data["train"]["text"]) & set(t2.data["test"]["text"])


def test_subsample_and_chance():
    t = task_from(toy_frame(200))
    s = t.subsample({"train": 10, "validation": 5, "test": None}, seed=1)
    assert s.sizes() == {"train": 10, "validation": 5, "test": 20}
    assert t.chance("test") == 0.5


def test_read_orange_tab_skips_the_two_type_rows(tmp_path):
    p = tmp_path / "x.tab"
    p.write_text("Category\tText\nd\tstring\nclass\t\nearn\tprofit rose\nacq\tbought a firm\n")
    df = read_orange_tab(p)
    assert list(df["Category"]) == ["earn", "acq"] and list(df.columns) == ["Category", "Text"]


@pytest.mark.assets
@pytest.mark.parametrize("name,labels,chance_below", [
    ("sentiment", 2, 0.51), ("subjectivity", 2, 0.51), ("topic", 20, 0.1), ("reuters", 8, 0.6), ("author", 2, 0.51)])
def test_bundled_tasks_from_real_corpora(name, labels, chance_below):
    t = load_task(name)
    assert t.num_labels == labels
    assert all(n > 400 for n in t.sizes().values())
    assert t.chance("test") < chance_below
    # no text leaks from one split into another, and none repeats within a split
    train, val, test = (set(t.data[s]["text"]) for s in ("train", "validation", "test"))
    assert not train & test and not train & val and not val & test
    assert len(train) == t.sizes()["train"] and len(test) == t.sizes()["test"]


@pytest.mark.assets
def test_a_bundled_task_is_assembled_once_and_mapped_back_the_same(monkeypatch):
    """Assembled from its corpora once; a new process (here: the in-memory memo cleared) maps the cached Arrow
    files back without assembling again, and they hold the same rows."""
    from fusionkit.data import tasks

    first = tasks.load_task("author").fingerprint()
    tasks._bundled.cache_clear()
    monkeypatch.setitem(tasks.BUNDLED, "author", (lambda: pytest.fail("assembled again"), "tweets"))
    again = tasks.load_task("author")
    assert again.fingerprint() == first and again.label_names == ["Clinton", "Trump"]
    tasks._bundled.cache_clear()
