"""Each notebook executed headlessly in the smoke profile, with its recorded numbers checked for sense."""
import pytest

from fusionkit.tour import check_parameters, notebooks, run_notebook


def test_injected_parameter_names_are_checked():
    with pytest.raises(ValueError, match="no parameter"):
        check_parameters(notebooks()[0], {"profil": "smoke"})


@pytest.mark.notebook
def test_00_start_here(tmp_path):
    nb = next(p for p in notebooks() if p.name.startswith("00_"))
    row = run_notebook(nb, tmp_path, {"profile": "smoke"}, timeout=1800)
    assert row["status"] == "ok", row["error"]
    rec = row["record"]
    assert rec["profile"] == "smoke" and rec["experts"] == 5
    assert 0.6 < rec["mean_own_test"] <= 1.0
    assert rec["min_gain_over_chance"] > 0.1
    assert (tmp_path / "00_start_here.html").stat().st_size > 10_000
