"""BigEarthNet 43 -> 19 -> 5 label maps and the multi-hot helpers."""

import numpy as np

from mtmg.data import labels


def test_ben_class_counts():
    assert len(labels.BEN43) == 43 and len(set(labels.BEN43)) == 43
    assert len(labels.BEN19) == 19 and len(labels.BEN5) == 5


def test_ben43_to_19_drops_the_eleven_official_classes():
    dropped = [labels.BEN43[i] for i, j in enumerate(labels.BEN43_TO_19) if j is None]
    assert dropped == [
        "Road and rail networks and associated land",
        "Port areas",
        "Airports",
        "Mineral extraction sites",
        "Dump sites",
        "Construction sites",
        "Green urban areas",
        "Sport and leisure facilities",
        "Bare rock",
        "Burnt areas",
        "Intertidal flats",
    ]


def test_ben43_to_19_examples():
    to19 = {
        labels.BEN43[i]: labels.BEN19[j] for i, j in enumerate(labels.BEN43_TO_19) if j is not None
    }
    assert to19["Continuous urban fabric"] == to19["Discontinuous urban fabric"] == "Urban fabric"
    assert to19["Rice fields"] == "Arable land"
    assert to19["Annual crops associated with permanent crops"] == "Permanent crops"
    assert to19["Sparsely vegetated areas"] == "Natural grassland and sparsely vegetated areas"
    assert to19["Salines"] == "Coastal wetlands"
    assert to19["Estuaries"] == to19["Sea and ocean"] == "Marine waters"


def test_ben5_is_clc_level_one_and_consistent_with_19():
    # CLC codes 1xx -> 0 ... 5xx -> 4 (docs/datasets.md: indices 0-10, 11-21, 22-32, 33-37, 38-42)
    assert [labels.BEN43_TO_5.count(k) for k in range(5)] == [11, 11, 11, 5, 5]
    for i43, i19 in enumerate(labels.BEN43_TO_19):
        if i19 is not None:
            assert labels.BEN19_TO_5[i19] == labels.BEN43_TO_5[i43]


def test_multi_hot_chain():
    names = ["Pastures", "Coniferous forest", "Port areas"]
    v43 = labels.multi_hot(names, labels.BEN43)
    assert v43.sum() == 3 and v43[17] == 1 and v43[23] == 1 and v43[4] == 1
    v19 = labels.convert_multi_hot(v43, labels.BEN43_TO_19, 19)
    assert np.flatnonzero(v19).tolist() == [4, 9]  # Pastures, Coniferous forest; port dropped
    v5 = labels.convert_multi_hot(v43, labels.BEN43_TO_5, 5)
    assert np.flatnonzero(v5).tolist() == [0, 1, 2]
    batch = labels.convert_multi_hot(np.stack([v43, v43]), labels.BEN43_TO_19, 19)
    assert batch.shape == (2, 19)


def test_igbp_simplification():
    assert len(labels.IGBP17_TO_10) == 18
    assert labels.SEN12MS_IGBP10[labels.IGBP17_TO_10[14]] == "Croplands"  # mosaic -> croplands
    assert labels.SEN12MS_IGBP10[labels.IGBP17_TO_10[17]] == "Water"
