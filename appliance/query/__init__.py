"""One protocol-neutral model of a search of the archive (pure: no I/O).

QIDO-RS parses its query parameters into a :class:`~appliance.query.model.Search`,
the coming C-FIND SCP parses its identifier into the same, the clinic UI
builds one; the store compiles it to SQL (appliance.store.index.search) and
answers :class:`~appliance.query.model.Row` objects. One matcher for every
protocol, so a study found by one is found by all.

- :mod:`.model`: levels, matches (PS3.4 C.2.2.2), the search and its rows;
- :mod:`.keys`: which attributes the index can match and return, at which
  level (PS3.4 C.6.1.1 / C.6.2.1, PS3.18 10.6.3.3);
- :mod:`.grammar`: the DA, TM and DT value and range grammars (PS3.5 6.2).
"""
