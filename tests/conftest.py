"""Shared fixtures: a small Chinese corpus on disk and an isolated cache folder for every test session."""
from __future__ import annotations

import random

import pytest
import torch

import kernels  # noqa: F401  (settles Triton's interpreter mode before any test imports triton)

# Sentences in the register of the default corpus (news of January 1998), recombined at random so that the
# tiny corpus has a few hundred distinct words and enough repetition for a model to learn something.
SENTENCES = [
    "新华社北京一月一日电", "国家主席发表新年讲话", "我们的祖国充满希望", "人民群众生活水平不断提高",
    "经济建设取得了巨大成就", "改革开放是强国之路", "科学技术是第一生产力", "农村经济继续稳定发展",
    "香港回归祖国以后繁荣稳定", "各族人民团结一致", "全国各地举行庆祝活动", "企业改革不断深化",
    "今年的工作任务十分艰巨", "记者从有关部门获悉", "这项工程已经全面完成", "教育事业得到了很大发展",
    "城市居民的收入稳步增长", "我们要坚持实事求是", "世界和平与发展是时代的主题", "文化市场日益繁荣",
]


def write_tiny_corpus(path, lines: int = 400, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write("，".join(rng.choice(SENTENCES) for _ in range(rng.randint(1, 4))) + "。\n")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Path of a ~400-line UTF-8 Chinese corpus (about 10k jieba tokens)."""
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    write_tiny_corpus(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Token-id caches go to a fresh folder, so tests never see a cache from an earlier run."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RNNLM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models gain nothing from a second thread, and on a busy machine
    every OpenMP region waits for a descheduled thread (10x slower steps); results are bit-exact at any fixed
    thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
