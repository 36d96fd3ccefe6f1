"""memd-cli: an operator's shell for a memd (or memcached) node and a fleet.

Modules, one job each:

- ``commands``   what a typed line is: its tokens, whether it still needs a
                 value, how its reply ends, whether a reply is an error;
- ``connection`` one blocking socket to a node (TCP or TLS, text login or
                 SASL on binary), sending a request and reading one reply;
- ``binary``     the binary protocol subset a SASL-only node needs;
- ``render``     replies and stats as rich tables (pure: bytes in, renderables out);
- ``completion`` prompt_toolkit completion of commands, stats groups and keys;
- ``fleet``      a set of nodes behind memd's ClusterClient ring;
- ``top``        the live ``memd-cli top`` view;
- ``main``       options, and the interactive / scripted loops.
"""
