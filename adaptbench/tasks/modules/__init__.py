"""The LightningModules of the built-in task kinds.

Importing any of them imports Lightning (seconds): a kind imports its module class inside
``build_module``, so that validating a spec, listing the registry or driving a matrix never
pays for it.
"""
