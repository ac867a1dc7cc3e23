from pillarbox.cli import main

raise SystemExit(main())
