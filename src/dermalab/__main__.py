from dermalab.cli import main

raise SystemExit(main())
