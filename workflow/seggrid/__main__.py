from seggrid.cli import main

raise SystemExit(main())
