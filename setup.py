"""Install chapiteau: the broker, the supervisor and the protocol they share.

The three top-level folders install under the ``chapiteau`` namespace so that
they never collide with other distributions (PyPI's ``supervisor`` owns that
import name); ``package_dir`` maps them, for plain and editable installs.
"""

from pathlib import Path

from setuptools import setup

PACKAGES = {
    "chapiteau.broker": "broker",
    "chapiteau.supervisor": "supervisor",
    "chapiteau.protocol": "protocol",
}

setup(
    name="chapiteau",
    version="0.1.0",
    description=(
        "A Circus-compatible process and socket manager with a privilege-separated socket broker"
    ),
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    install_requires=[
        "pyzmq>=25",
        "python-prctl>=1.8",
        "structlog>=23",
        "psutil>=5.9",
    ],
    extras_require={
        # ruff pinned: a new release adds rules and restyles, which would fail CI on unchanged code.
        "test": ["pytest>=8,<10", "hypothesis>=6", "ruff==0.17.6", "pytest-timeout>=2"],
    },
    entry_points={
        "console_scripts": [
            "chapiteau = chapiteau.broker.main:main",
            "chapiteau-supervisor = chapiteau.supervisor.main:main",
            "chapiteauctl = chapiteau.supervisor.ctl:main",
        ],
    },
    classifiers=[
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Monitoring",
    ],
)
