import matplotlib
import pytest
import torch

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one intra-op thread, and a shared 2-core machine does not thrash.

    Modules of tiny models use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``;
    the thread count is restored after the module.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
