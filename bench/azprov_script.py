"""A plain launcher: what an installer can put at /usr/bin/azprov (with a `#!/usr/lib/azprov/bin/python`
line) instead of pip's console-script wrapper, which imports `re` (~7 ms, about half of `python -c pass`)
before calling `statemachine.launch:main`. The benchmark runs it as the agent `azprov_script`."""
import sys

from statemachine.launch import main

sys.exit(main())
