"""Adapters for foreign interfaces: the RunPod worker and the HTTP shapes of the services this
product replaces, one module per interface. Each only translates shapes to and from our jobs (the
same engine, kinds and store); none has logic of its own. The layer sits above `server | client`
(the server never imports it) and below `ui`."""
