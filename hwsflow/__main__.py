from hwsflow.cli import main

raise SystemExit(main())
