"""The read side: queries the interfaces show (``queries``), the console log off
disk (``console``), the metrics charts (``charts``) and the filters of the lists
the API and the portal share (``filtersets``).  Nothing here writes."""
