import io

from tqdm.auto import tqdm

from polymodal.progress import LogLines, show_progress


def test_log_lines_print_one_line_per_tenth_of_the_way():
    stream = io.StringIO()
    with LogLines(45, "eval colours", "prompt", stream=stream) as bar:
        for _ in range(9):
            bar.set_postfix(accuracy="50%")
            bar.update(5)
    lines = stream.getvalue().splitlines()
    # 45 in steps of 5: the tenths 1, 2, 3, 4, 5, 6, 7, 8 and 10 are crossed (9 is jumped over, 40 -> 45)
    assert [line.split(":")[1].split(",")[0].strip() for line in lines] == [
        f"{n}/45 prompts ({n / 45:.0%})" for n in (5, 10, 15, 20, 25, 30, 35, 40, 45)
    ]
    assert all(line.startswith("eval colours: ") and line.endswith("accuracy 50%") for line in lines)
    big = io.StringIO()
    bar = LogLines(1000, "index", "file", stream=big)
    for _ in range(1000):
        bar.update()
    assert len(big.getvalue().splitlines()) == 10  # not one line per item
    empty = io.StringIO()
    LogLines(0, "nothing", "item", stream=empty).update(0)
    assert empty.getvalue() == ""


def test_show_progress_picks_lines_off_a_terminal_and_nothing_when_disabled(capsys):
    bar = show_progress(4, "shapes", "sample")  # pytest's stderr is not a terminal
    assert isinstance(bar, LogLines)
    bar.update(4)
    assert "shapes: 4/4 samples (100%)" in capsys.readouterr().err
    off = show_progress(4, "shapes", "sample", enabled=False)
    assert isinstance(off, tqdm) and off.disable
    off.update(4)
    off.close()
    assert capsys.readouterr().err == ""
