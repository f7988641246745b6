from prodclf.cli import main

raise SystemExit(main())
