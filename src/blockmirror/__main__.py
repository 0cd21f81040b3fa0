from blockmirror.cli import main

raise SystemExit(main())
