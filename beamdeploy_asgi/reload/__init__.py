"""Hot reload: a new release's pure-Python app code patched into running processes.

The package is `reload`, not `hot_reload`, so that `beamdeploy_asgi.hot_reload` stays the
function of the public API.
"""
