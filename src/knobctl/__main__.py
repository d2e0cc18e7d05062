from knobctl.cli import main

raise SystemExit(main())
