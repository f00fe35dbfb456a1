from dispatch.entry import main

raise SystemExit(main())
