"""Maps the top-level folders into the one `pulse` namespace (protocol/ -> pulse.protocol, ...).

Kept in code rather than a static list so that a new subpackage (cloud/api/, ...) is packaged
without anyone remembering to list it. Metadata lives in pyproject.toml.
"""

from setuptools import find_packages, setup

ROOTS = {
    "pulse.protocol": "protocol",
    "pulse.edge": "edge",
    "pulse.cloud": "cloud",
    "pulse.firmware_sim": "firmware-sim",
    "pulse.bench": "bench",
    "pulse.cli": "cli",
    "pulse.common": "common",
    "pulse.broker": "broker",
}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder, exclude=["node_modules*"])]

setup(packages=packages, package_dir=ROOTS, package_data={"": ["*.sql", "*.html", "*.css", "*.js", "py.typed"]})
