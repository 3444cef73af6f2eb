import numpy as np

from fusionkit.models.zoo import label_skewed_partitions


def test_partitions_cover_everything_once_and_are_skewed():
    labels = np.repeat(np.arange(20), 50)
    parts = label_skewed_partitions(labels, 4, skew=0.8, seed=0)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))
    for i, idx in enumerate(parts):
        home = (labels[idx] % 4 == i).mean()
        assert 0.7 < home < 0.9  # ~80% of a partition comes from its own classes, vs 25% if IID
    again = label_skewed_partitions(labels, 4, skew=0.8, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
