"""amd_utils.prompts.load_prompts: every prompt source the trainer accepts, and its one-sentence errors."""

import argparse

import pytest

from amd_utils.prompts import load_prompts


def _args(**kwargs):
    return argparse.Namespace(
        **{"prompts_file": None, "dataset_name": None, "dataset_split": "train", "prompt_column": "prompt", **kwargs}
    )


def test_text_csv_jsonl_and_local_dataset(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "p.csv").write_text('prompt,score\na cat,1\n"a dog, running",2\n,3\n')
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n\n{"prompt": "a dog"}\n{"other": 1}\n')
    assert load_prompts(_args(prompts_file=str(tmp_path / "p.txt"))) == ["a cat", "a dog"]
    assert load_prompts(_args(prompts_file=str(tmp_path / "p.csv"))) == ["a cat", "a dog, running"]
    assert load_prompts(_args(prompts_file=str(tmp_path / "p.jsonl"))) == ["a cat", "a dog"]
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "train.csv").write_text("caption\na cat\na dog\n")
    assert load_prompts(_args(dataset_name=str(tmp_path / "dataset"), prompt_column="caption")) == ["a cat", "a dog"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", "\n \n", "holds no prompts"),
        ("no_column.csv", "text\na cat\n", "holds no prompts: give one prompt per line (or a 'prompt' column)"),
        ("prompts.tsv", "a cat\n", "--prompts_file must be one of .txt, .csv, .jsonl"),
    ],
)
def test_bad_prompt_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_prompts(_args(prompts_file=str(tmp_path / name)))
    with pytest.raises(ValueError, match="does not exist"):
        load_prompts(_args(prompts_file=str(tmp_path / "missing.txt")))
