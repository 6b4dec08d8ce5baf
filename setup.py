from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="postgraas_server",
    version="3.0.0.dev0",
    description="PostgreSQL databases on demand, over REST",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["postgraas_server", "postgraas_server.*"]),
    # The console's static files (HTML, CSS, ES modules) are served from the installed package.
    package_data={
        "postgraas_server": ["migrations/script.py.mako", "migrations/versions/*.py", "console/static/*"],
    },
    install_requires=[
        "Flask>=3.1,<4",
        "Flask-RESTful>=0.3.10,<0.4",
        "Flask-SQLAlchemy>=3.1,<4",
        "SQLAlchemy>=2.0,<2.1",
        "psycopg[binary]>=3.2,<4",
        "alembic>=1.13,<2",
        "docker>=7.1,<8",
        "gunicorn>=25.1",
        "h11>=0.14,<1",
        "pydantic>=2.7,<3",
        "click>=8.1,<9",
        "prometheus-client>=0.20,<1",
        "requests>=2.31,<3",
    ],
    entry_points={
        "console_scripts": [
            "postgraas-server=postgraas_server.cli:main",
            "postgraas=postgraas_server.client.cli:main",
        ],
        # The postgraas_database fixture, for any project that installs this package.
        "pytest11": ["postgraas=postgraas_server.pytest_plugin"],
    },
)
