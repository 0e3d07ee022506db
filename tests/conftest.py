import os

# No machine here reaches the Hugging Face hub; tests must never try.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Engines started by tests write their connection files (token) here, not in the user's home.
if "ZIMAGE_RUNTIME_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["ZIMAGE_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="zimage-runtime-")
    atexit.register(shutil.rmtree, os.environ["ZIMAGE_RUNTIME_DIR"], True)

pytest_plugins = ["tests.fixtures.plugin"]
