from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mongol",
    version="0.2.0",
    description="Self-hosted web analytics: a tracking pixel served by gevent, map/reduce reports as JSONP",
    long_description=Path(__file__).with_name("README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["mongol", "mongol.*"]),
    package_data={"mongol": ["dashboard/*.html", "dashboard/*.js", "dashboard/*.css", "mapreduce/*.js", "static/*.js"]},
    install_requires=[
        "gevent>=24.2.1",
        "pymongo>=4.6",
        "orjson>=3.9",
        "quickjs-ng>=0.17",
        "tqdm>=4.66",
        "prometheus_client>=0.20",
        "nagiosplugin>=1.4",
        "ua-parser[regex]>=1.0",  # browser, OS, device; [regex] brings its Rust matcher (ua-parser-rs)
        "crawler-user-agents>=1.60",  # the community-kept list of crawler User-Agents
        "maxminddb>=2.5",  # --geoip
        "httptools>=0.6.4",  # llhttp, the strict HTTP/1.1 parser of mongol.httpserver
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "hypothesis>=6.100",
            "pillow>=10.0",
            "playwright>=1.40",
            "ruff>=0.6",
            "mmdb-writer>=0.2.5",  # builds the test's MaxMind database
            "netaddr>=1.0",
            "redbot>=2.7",  # lints the pixel's caching headers (tests/test_serve_exposure.py)
        ],
    },
    entry_points={
        "console_scripts": [
            "mongol-serve=mongol.cli.serve:main",
            "mongol-report=mongol.cli.report:main",
            "mongol-check=mongol.cli.check:main",
            "mongol-ingest=mongol.cli.ingest:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Gevent",
        "Topic :: Internet :: WWW/HTTP :: Site Management",
    ],
)
